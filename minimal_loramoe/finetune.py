"""The fine-tuning of every method: its config (:class:`FinetuneConfig`), the model it trains
(:func:`prepare_model`) and the one SFT loop (:func:`sft_loop`) that trains every model of the book.

The methods are the entries of :mod:`minimal_loramoe.methods` (``methods.TABLE``). The loss of one step is

    answer-only cross-entropy                                  (sft.answer_loss: the prompt is context)
    + localized balancing loss summed over LoRAMoE layers      (methods with ``lbc``; Dou et al., 2024, Eq. 9)
    + l1_weight * slim.l1_penalty(model)                       (``l1_weight > 0``; SLIM, Han et al., 2025)

With ``mask_rate > 0`` every evaluation sees the experts DARE-masked (:func:`~minimal_loramoe.slim.dare_masked`);
training always uses the unmasked experts. By default one pass over the data, constant learning rate after a
linear warm-up; ``steps`` and ``schedule="cosine"`` give a fixed-length recipe (book/design_notes.md: why).
"""
import copy
import math
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm  # text bars: widget bars cannot render in the static book

from .balance import BETA, DELTA, model_balance_loss
from .sft import IGNORE_INDEX, answer_loss, encode_examples
from . import checkpoint as ckpt
from .config import AdapterConfig
from .inject import adapter_layers, adapter_state_dict, add_adapters, save_adapter
from .methods import PLAIN_SETTINGS, get_method
from .slim import dare_masked, l1_penalty
from .utils import get_device, set_seed

SCHEDULES = ("constant", "cosine")
COLUMNS = ("prompt", "answer", "type")
_A = AdapterConfig()  # the adapter defaults live there


def _number(name, value, low=None, high=None, low_open=False, high_open=True):
    """Raise a ValueError unless ``value`` is a finite real number in the given range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        if high is not None:
            rng = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        else:
            rng = f"{'>' if low_open else '>='} {low:g} and finite"
        raise ValueError(f"{name} must be {rng}, got {value!r}")


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run. ``rank`` is per expert; LoRA and gated LoRA get rank ``num_experts*rank``.

    ``batch_size`` is per process: with P data-parallel processes a step trains on ``P * batch_size`` samples.
    ``steps=None`` is one pass over the data; ``steps=N`` is N steps, reshuffling each time the data runs out.
    ``schedule``: ``"constant"`` after ``warmup_steps`` of linear warm-up, or ``"cosine"`` decay to 0 at the end.

    The adapter fields (``num_experts``, ``rank``, ``alpha``, ``dropout``, ``target_modules``, SLIM's) take their
    defaults from :class:`~minimal_loramoe.config.AdapterConfig` (:meth:`adapter_config` builds it).
    The SLIM fields (``top_k`` ... ``mask_rate``) left at None take the method's value (``methods.TABLE``)
    (plain LoRAMoE's for the other methods); ``l1_weight`` and ``mask_rate`` apply to any LoRAMoE-layer method.
    Every number is checked (finite, in range) when the config is made. ``help`` in each field's metadata is the
    help of its flag in ``python -m minimal_loramoe.train``.
    """
    method: str = field(default="loramoe", metadata={"help": "one of methods.METHODS"})
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate (AdamW), > 0"})
    batch_size: int = field(default=32, metadata={"help": "samples per process and step"})
    num_experts: int = field(default=_A.num_experts, metadata={"help": "LoRAMoE experts per linear"})
    rank: int = field(default=_A.r, metadata={"help": "rank per expert (LoRA: num-experts x rank)"})
    alpha: float = field(default=_A.lora_alpha, metadata={"help": "lora_alpha: the update is scaled by alpha/rank"})
    dropout: float = field(default=_A.lora_dropout, metadata={"help": "adapter dropout, in [0, 1)"})
    lbc_delta: float = field(default=DELTA, metadata={"help": "balancing constraint: delta (>= 0)"})
    lbc_beta: float = field(default=BETA, metadata={"help": "balancing constraint: weight beta (>= 0)"})
    warmup_steps: int = field(default=20, metadata={"help": "steps of linear learning-rate warm-up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (>= 0)"})
    seed: int = field(default=0, metadata={"help": "data order and adapter initialisation"})
    steps: int | None = field(default=None, metadata={
        "help": "optimizer steps (default: one pass over the data in full batches)"})
    schedule: str = field(default="constant", metadata={
        "help": "learning rate after warm-up: constant, or cosine decay to 0 at the last step"})
    top_k: int | None = field(default=None, metadata={"help": "SLIM: experts kept per token"})
    num_identity_experts: int | None = field(default=None, metadata={"help": "SLIM: identity experts per linear"})
    num_clusters: int | None = field(default=None, metadata={"help": "SLIM: clusters of weight yielding"})
    yield_scale: float | None = field(default=None, metadata={"help": "SLIM: weight yielding's bonus per sigma"})
    l1_weight: float | None = field(default=None, metadata={  # weight of slim.l1_penalty in the loss
        "help": "SLIM: weight of the L1 penalty on the adapters"})
    mask_rate: float | None = field(default=None, metadata={  # DARE masking rate p at evaluation
        "help": "SLIM: DARE masking rate at evaluation (the training command only records it)"})
    target_modules: list[str] | None = field(default=_A.target_modules, metadata={
        "help": "names of the linears to adapt (PEFT's rule: a module matches a name it equals or ends with "
                "'.'+name); default: the feed-forward linears of the model's architecture (config.TARGET_MODULES)"})

    def __post_init__(self):
        entry = get_method(self.method)
        for name, value in {**PLAIN_SETTINGS, **entry.settings}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if entry.adapter != "LORAMOE" and any(getattr(self, k) != v for k, v in PLAIN_SETTINGS.items()):
            raise ValueError(f"top_k, num_identity_experts, num_clusters, yield_scale, l1_weight and mask_rate need "
                             f"a LoRAMoE-layer method, not method={self.method!r}")
        if self.target_modules is not None:
            self.target_modules = [self.target_modules] if isinstance(self.target_modules, str) else \
                list(self.target_modules)
        if entry.adapter is None and self.target_modules is not None:
            raise ValueError("target_modules needs an adapter method: full_ft trains every weight")
        self._adapter_config("LORAMOE")  # checks rank, alpha, dropout, num_experts, SLIM's routing (every method)
        _number("lr", self.lr, 0, low_open=True)
        _number("weight_decay", self.weight_decay, 0)
        _number("lbc_delta", self.lbc_delta, 0)
        _number("lbc_beta", self.lbc_beta, 0)
        _number("l1_weight", self.l1_weight, 0)
        _number("mask_rate", self.mask_rate, 0, 1)
        for name in ("batch_size", "warmup_steps", "seed") + (("steps",) if self.steps is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 (or None for one pass over the data), got {self.steps!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if entry.lbc is not None and self.num_experts % 2:
            raise ValueError(f"num_experts must be even for method {self.method!r}: the balancing constraint splits "
                             f"the experts into two equal groups (paper Sec. 3.3), got {self.num_experts}")

    def adapter_config(self) -> AdapterConfig | None:
        """The :class:`AdapterConfig` of this run's adapters (None for ``full_ft``)."""
        adapter = get_method(self.method).adapter
        return None if adapter is None else self._adapter_config(adapter)

    def _adapter_config(self, peft_type: str) -> AdapterConfig:
        if peft_type != "LORAMOE":
            return AdapterConfig(peft_type, r=self.num_experts * self.rank, lora_alpha=self.alpha,
                                 lora_dropout=self.dropout, target_modules=self.target_modules)
        return AdapterConfig(peft_type, r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                             target_modules=self.target_modules, num_experts=self.num_experts, top_k=self.top_k,
                             num_identity_experts=self.num_identity_experts, num_clusters=self.num_clusters,
                             yield_scale=self.yield_scale)


def prepare_model(base_model, config: FinetuneConfig, copy_model: bool = True):
    """``base_model`` set up for ``config.method``: a fresh copy (the base model itself is never touched), or with
    ``copy_model=False`` the model itself, changed in place (a 7B model is not copied just to be thrown away)."""
    model = copy.deepcopy(base_model) if copy_model else base_model
    c = config
    if get_method(c.method).adapter is None:
        return model.requires_grad_(True)
    model = add_adapters(model, c.adapter_config())
    if get_method(c.method).frozen_router:
        for layer in adapter_layers(model).values():  # softmax(0) = 1/E for every expert, and it stays there
            torch.nn.init.zeros_(layer.router.weight)
            layer.router.weight.requires_grad_(False)
    return model


def finetune(base_model, tokenizer, dataset, config: FinetuneConfig, eval_every=None, eval_fn=None,
             device=None, progress: bool = True):
    """Fine-tune a copy of ``base_model`` on ``dataset`` (columns prompt, answer, type) with :func:`sft_loop`.

    Args:
        eval_every: example counts (e.g. ``[1000, 4000, 16000]``) after which ``eval_fn(model, n_seen)`` is
            called; its results are returned in ``history["evals"]``. The data order is fixed by ``config.seed``
            and does not depend on ``eval_every``.
    Returns:
        (model, history) with history = {"config", "loss", "lbc", "l1", "evals"}; the model is returned unmasked
        (with ``mask_rate > 0`` wrap its use in ``dare_masked(model, config.mask_rate, config.seed)``).
    """
    device = get_device(device)
    set_seed(config.seed)
    model = prepare_model(base_model, config).to(device).train()
    history = sft_loop(model, tokenizer, dataset, config, device=device, eval_every=eval_every, eval_fn=eval_fn,
                       progress=progress)
    return model.eval(), history


# ----------------------------------------------------------------------------------------------------------------
# the loop


class AnswerOnlyLoss(nn.Module):
    """A model and its SFT loss as one module: ``forward(**batch)`` is :func:`sft.answer_loss`.

    Why a module: under data parallelism (DDP, FSDP) gradients are synchronised only for a forward pass that
    goes through the wrapped module. ``answer_loss`` calls the decoder and the output layer of a causal LM
    separately (the vocabulary projection runs at the answer positions only), which would bypass a wrapper put
    around the causal LM itself; wrapping this module instead keeps that saving *and* the synchronisation.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        return answer_loss(self.model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})


def plain_encoder(tokenizer, prompts, answers) -> dict:
    """The default batch encoder: ``<s> prompt answer </s>``, the loss on ``answer </s>`` only."""
    return encode_examples(tokenizer, prompts, answers, add_eos=True)


def batch_indices(n: int, global_batch: int, steps: int | None, seed: int) -> list[list[int]]:
    """The row indices of every (global) batch, in a random order fixed by ``seed``.

    ``steps=None``: one pass, the last batch possibly shorter. ``steps=N``: N full batches; when the rows left in
    the current order cannot fill a batch, a new random order starts (those rows come back in the next one).
    The batches depend on the *global* batch size only, not on how many processes share each batch.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g).tolist()
    if steps is None:
        return [order[i:i + global_batch] for i in range(0, n, global_batch)]
    if global_batch > n:
        raise ValueError(f"the global batch ({global_batch} samples) is larger than the dataset ({n} rows)")
    batches, pos = [], 0
    for _ in range(steps):
        if pos + global_batch > n:
            order, pos = torch.randperm(n, generator=g).tolist(), 0
        batches.append(order[pos:pos + global_batch])
        pos += global_batch
    return batches


def lr_factor(config: FinetuneConfig, total_steps: int):
    """The learning-rate multiplier of step s: linear warm-up, then constant or a cosine decay to 0."""
    def warm(s):
        return min(1.0, (s + 1) / max(1, config.warmup_steps))
    if config.schedule == "constant":
        return warm
    return lambda s: warm(s) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))


def check_sft_dataset(dataset) -> None:
    """Refuse a dataset without the columns prompt, answer, type, or with types other than 0 and 1."""
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        raise ValueError(f"dataset must be a datasets.Dataset with columns {COLUMNS}, got {type(dataset).__name__}")
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"dataset must have the columns {COLUMNS}; missing {missing} "
                         "(type: 1 = world-knowledge sample, 0 = other task)")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    types = set(dataset.unique("type"))
    if not types <= {0, 1}:
        raise ValueError(f"column 'type' must hold only 0 (other task) and 1 (world knowledge), got {sorted(types)}")


def _gather_keeping_local_grad(accelerator, z: torch.Tensor) -> torch.Tensor:
    """(L, B, E) of this process -> (L, P*B, E) of all processes, in process order (= the rows of the global batch).

    The other processes' rows arrive as constants; only this process's own rows carry a gradient. Every process
    then computes the same global loss L, and the gradient it back-propagates is dL/d(own rows) only; DDP
    *averages* those over the P processes, so the loss is multiplied by P before backward (see :func:`sft_loop`)
    to make the average the full gradient dL/dθ of a one-process run on the whole batch.
    """
    everyone = accelerator.gather(z.detach().transpose(0, 1).contiguous()).transpose(0, 1)  # (L, P*B, E)
    r, b = accelerator.process_index, z.shape[1]
    return torch.cat([everyone[:, :r * b], z, everyone[:, (r + 1) * b:]], dim=1)


def _shards_parameters(accelerator) -> bool:
    """Whether the parameters are split across processes outside the forward pass (FSDP, DeepSpeed ZeRO-3)."""
    kind = str(accelerator.distributed_type)
    if kind.endswith("FSDP"):
        return True
    deepspeed = getattr(accelerator.state, "deepspeed_plugin", None)
    return kind.endswith("DEEPSPEED") and deepspeed is not None and deepspeed.zero_stage == 3


class TrainingStopped(Exception):
    """The loop stopped before its last step: ``should_stop`` said so (an interrupt), or the loss was not finite.

    ``step``: the optimizer steps done; ``checkpoint``: the path of the last checkpoint written (None if none);
    ``nonfinite``: True when the loss was not finite (the model then holds the weights of step ``step``).
    """

    def __init__(self, message: str, step: int, checkpoint=None, nonfinite: bool = False):
        super().__init__(message)
        self.step, self.checkpoint, self.nonfinite = step, checkpoint, nonfinite


def sft_loop(model, tokenizer, dataset, config: FinetuneConfig, *, encode=plain_encoder, accelerator=None,
             device=None, eval_every=None, eval_fn=None, save_to=None, progress: bool = True,
             checkpoint=None, save_every: int | None = None, resume: bool = False, should_stop=None,
             checkpoint_extra: dict | None = None) -> dict:
    """Train whatever requires a gradient in ``model`` on ``dataset`` with AdamW: the one SFT loop of the book.

    Args:
        model: a causal LM, already prepared for ``config.method`` (see :func:`prepare_model`).
        dataset: a ``datasets.Dataset`` with columns prompt, answer and type (1 = world knowledge, 0 = task).
        encode: ``encode(tokenizer, prompts, answers) -> {input_ids, attention_mask, labels}`` with label -100 on
            every position that is not trained on (default :func:`plain_encoder`; chat models render the prompt
            with their chat template first, see ``train.chat_encoder``).
        accelerator: an ``accelerate.Accelerator`` for one or many processes; None trains in this process alone,
            on ``device`` (default: where the model is).
        eval_every, eval_fn: as in :func:`finetune` (``eval_fn`` runs in every process).
        save_to: a folder to write the result into at the end (:func:`save_trained`): the adapters in PEFT's
            layout, or for full fine-tuning the whole model with ``save_pretrained`` (safetensors) and the tokenizer.
        checkpoint: a file (``checkpoint.safetensors``, see :mod:`~minimal_loramoe.checkpoint`) written every
            ``save_every`` steps and when ``should_stop()`` turns true; deleted once ``save_to`` is written.
        resume: continue from ``checkpoint`` (which must exist and come from a run with the same config, number of
            processes and ``checkpoint_extra``): the result is the one the run would have had without stopping.
        should_stop: ``should_stop(steps_done)`` is called after every step but the last; when it returns True the
            loop writes ``checkpoint`` (if given) and raises :class:`TrainingStopped`. A loss that is not finite
            also raises it, before the update, naming the step; the last checkpoint written is kept.
    Returns:
        history = {"config", "loss", "lbc", "l1", "evals"}: the answer-only cross-entropy and the balancing loss
        of every step, both over the whole global batch, and SLIM's weighted L1 penalty (``l1_weight > 0`` only).
        With ``mask_rate > 0`` each ``eval_fn`` call sees the experts DARE-masked; the model is left unmasked.

    Data parallelism: each step takes one global batch of ``P * config.batch_size`` rows (:func:`batch_indices`),
    process r trains on its r-th slice, and the losses are scaled so that P processes train exactly like one
    (book/design_notes.md); SLIM's cluster buffers follow process 0's slices (warned). FSDP and ZeRO-3 are refused
    with ``l1_weight > 0``, DARE-masked evaluation and checkpoints.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters: prepare it with prepare_model(model, config)")
    check_sft_dataset(dataset)
    rank, procs = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    sharded = accelerator is not None and _shards_parameters(accelerator)
    if sharded and (config.l1_weight > 0 or (config.mask_rate > 0 and eval_fn is not None)):
        raise ValueError("l1_weight > 0 and DARE-masked evaluation (mask_rate > 0 with eval_fn) read the whole "
                         "adapters outside the forward pass, which FSDP and DeepSpeed ZeRO-3 shard across processes: "
                         "train with DDP (or ZeRO-1/2), or set l1_weight=0 / mask_rate=0")
    if sharded and (save_every or resume):
        raise ValueError("checkpoints (save_every, resume) are not supported under FSDP or DeepSpeed ZeRO-3, which "
                         "shard the optimizer state: train with DDP (or ZeRO-1/2)")
    if (save_every or resume) and checkpoint is None:
        raise ValueError("save_every and resume need a checkpoint path")
    if save_every is not None and (isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1):
        raise ValueError(f"save_every must be an integer >= 1, got {save_every!r}")
    extra = dict(checkpoint_extra or {})
    if resume:  # read (and check) before anything else is done
        saved_tensors, saved_meta = ckpt.read_checkpoint(checkpoint)
        ckpt.check_resumable(saved_meta, config, procs, extra, checkpoint)
    if accelerator is not None:
        device = accelerator.device
    device = torch.device(device) if device is not None else next(model.parameters()).device
    is_main = accelerator is None or accelerator.is_main_process
    n, per_process = len(dataset), config.batch_size
    if procs > 1 and config.steps is None and n % (per_process * procs):
        raise ValueError(f"with {procs} processes every global batch must be full: give steps (the data then "
                         f"cycles), or a dataset whose size is a multiple of {per_process * procs}; got {n} rows")
    batches = batch_indices(n, per_process * procs, config.steps, config.seed)
    checkpoints = sorted(set(eval_every or []))
    seen_at_end = n if config.steps is None else config.steps * per_process * procs
    if checkpoints and checkpoints[-1] > seen_at_end:
        raise ValueError(f"eval_every asks for {checkpoints[-1]} examples but the run sees only {seen_at_end}"
                         + (f" (the dataset has only {n})" if config.steps is None else ""))

    model = model.to(device).train()
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # The schedule counts optimizer steps (global batches). It is not handed to accelerator.prepare, whose
    # scheduler wrapper would step it once per process per step.
    factor = lr_factor(config, len(batches))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    history = {"config": asdict(config), "loss": [], "lbc": [], "l1": [], "evals": {}}
    start = 0
    if resume:
        start = ckpt.restore(saved_tensors, saved_meta, model, opt, checkpoint)
        sched.last_epoch = start  # LambdaLR's lr of step s is initial_lr * factor(s): the restored groups hold it
        sched._last_lr = [g["lr"] for g in opt.param_groups]
        history.update({k: list(v) for k, v in saved_meta["history"].items()})
        checkpoints = [c for c in checkpoints if c > start * per_process * procs]
    objective = AnswerOnlyLoss(model)
    adapter_names = list(adapter_state_dict(model)) if adapter_layers(model) else None  # before any wrapping
    if accelerator is not None:
        deepspeed = getattr(accelerator.state, "deepspeed_plugin", None)
        if deepspeed is not None:  # DeepSpeed reads the per-process batch size from a DataLoader; we have none
            deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = per_process
        objective, opt = accelerator.prepare(objective, opt)  # DDP/FSDP/DeepSpeed wrapper, device placement
        model = accelerator.unwrap_model(objective).model     # the LoRAMoE layers that keep `last_gates`
    if procs > 1 and config.num_clusters and is_main:
        warnings.warn("SLIM's weight yielding (num_clusters > 0) updates its cluster buffers from each process's "
                      "slice and DDP copies process 0's to the others at every step: with several processes the "
                      "clusters follow process 0's slices only, and the run does not train exactly like one process")
    lbc = get_method(config.method).lbc
    gather = partial(_gather_keeping_local_grad, accelerator) if procs > 1 else None
    if resume:
        ckpt.set_rng_state(saved_tensors, rank)  # the random state the run had after step `start`
        del saved_tensors
    last_saved = start if resume else None

    def write_checkpoint(done: int) -> None:
        nonlocal last_saved
        states = _rng_states(accelerator, procs, device)  # every process takes part in the gather
        if is_main:
            ckpt.save_checkpoint(checkpoint, model, opt, done, history, config, states, extra)
        last_saved = done

    def where() -> str:
        return (f"; the last checkpoint ({checkpoint}, after step {last_saved}) is kept" if last_saved is not None
                else "; no checkpoint was written")

    bar = tqdm(batches[start:], desc=config.method, disable=not (progress and is_main), leave=False, initial=start,
               total=len(batches))
    for step, idx in enumerate(bar, start=start):
        rows = dataset[idx[rank * per_process:(rank + 1) * per_process]]  # this process's slice of the batch
        batch = {k: v.to(device) for k, v in encode(tokenizer, rows["prompt"], rows["answer"]).items()}
        loss = objective(**batch)  # mean cross-entropy over this process's answer tokens
        ce = total = loss
        if procs > 1:  # rescale to (sum over own answer tokens) / (answer tokens of the global batch) * P
            n_own = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().float()
            n_all, loss_sum = accelerator.reduce(torch.stack([n_own, loss.detach() * n_own]), reduction="sum")
            total, ce = loss * (n_own * procs / n_all), loss_sum / n_all
        aux = l1 = None
        if lbc is not None:
            aux = model_balance_loss(model, torch.tensor(rows["type"], device=device),
                                     attention_mask=batch["attention_mask"], delta=config.lbc_delta,
                                     beta=config.lbc_beta, variant=lbc, gather=gather)
            total = total + (aux * procs if procs > 1 else aux)
        if config.l1_weight > 0:  # the same in every process and not rescaled (see the docstring)
            l1 = config.l1_weight * l1_penalty(model)
            total = total + l1
        bad = ~torch.isfinite(total.detach())
        if procs > 1:  # every process stops at the same step, or DDP's all-reduce would wait forever
            bad = accelerator.reduce(bad.float(), reduction="sum") > 0
        if bad.item():
            raise TrainingStopped(f"step {step + 1} of {len(batches)}: the loss is not finite (cross-entropy "
                                  f"{ce.item():.4g}" + (f", balancing loss {aux.item():.4g}" if aux is not None else "")
                                  + (f", L1 penalty {l1.item():.4g}" if l1 is not None else "")
                                  + f"); stopped before the update{where()}", step, checkpoint if last_saved
                                  is not None else None, nonfinite=True)
        if aux is not None:
            history["lbc"].append(aux.item())
        if l1 is not None:
            history["l1"].append(l1.item())
        opt.zero_grad(set_to_none=True)
        if accelerator is not None:
            accelerator.backward(total)
        else:
            total.backward()
        opt.step()
        sched.step()
        history["loss"].append(ce.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}",
                            **({"lbc": f"{history['lbc'][-1]:.4f}"} if lbc is not None else {}))
        seen = min(n, (step + 1) * per_process * procs) if config.steps is None else (step + 1) * per_process * procs
        while checkpoints and seen >= checkpoints[0]:
            masked = eval_fn is not None and config.mask_rate > 0  # SLIM evaluates DARE-masked experts
            with dare_masked(model, config.mask_rate, config.seed) if masked else nullcontext():  # same masks
                history["evals"][checkpoints[0]] = eval_fn(model, checkpoints[0]) if eval_fn else None
            model.train()
            checkpoints.pop(0)
        done = step + 1
        if should_stop is not None and done < len(batches):
            stop = torch.tensor(float(bool(should_stop(done))), device=device)
            if procs > 1:  # a signal may reach one process a step before another: stop where any of them asks
                stop = accelerator.reduce(stop, reduction="sum")
            if stop.item() > 0:
                if checkpoint is not None and not sharded:
                    write_checkpoint(done)
                raise TrainingStopped(f"stopped after step {done} of {len(batches)}" + (
                    f"; checkpoint written to {checkpoint}" if last_saved == done else where()), done,
                    checkpoint if last_saved is not None else None)
        if save_every and done % save_every == 0 and done < len(batches):
            write_checkpoint(done)
    model.eval()
    if save_to is not None:
        save_trained(objective, model, tokenizer, save_to, adapter_names, accelerator)
        if checkpoint is not None and is_main and Path(checkpoint).exists():
            Path(checkpoint).unlink()  # the result is written; the checkpoint has done its job
    return history


def _rng_states(accelerator, procs: int, device) -> list:
    """Every process's (CPU, CUDA or None) random state, in process order (gathered to all processes)."""
    cpu, cuda = ckpt.rng_state()
    if procs == 1:
        return [(cpu, cuda)]
    parts = []
    for state in (cpu, cuda):
        if state is None:
            parts.append([None] * procs)
            continue
        everyone = accelerator.gather(state.to(device=device, dtype=torch.int32)).cpu().to(torch.uint8)
        parts.append(list(everyone.chunk(procs)))
    return list(zip(*parts))


# what save_pretrained writes for the weights: a previous run's files of these kinds are replaced, not mixed in
_WEIGHT_FILES = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")


def save_trained(objective, model, tokenizer, folder, adapter_names, accelerator=None) -> None:
    """Write the trained weights into ``folder``: the adapters only, in PEFT's layout (``adapter_config.json`` and
    ``adapter_model.safetensors``, see ``inject.save_adapter``), or for full fine-tuning the whole model
    (``save_pretrained``: ``model.safetensors`` + config) and the tokenizer. Every file is written under a temporary
    name and renamed into place; a previous model's weight files (shards, index) are removed, not mixed in.

    Under FSDP or DeepSpeed ZeRO-3 each process holds only a shard of the weights: ``accelerator.get_state_dict``
    gathers the full tensors (every process must call it); only the main process writes.
    """
    import shutil
    import tempfile

    folder = Path(folder)
    state = accelerator.get_state_dict(objective) if accelerator is not None else objective.state_dict()
    state = {k.removeprefix("model."): v for k, v in state.items()}  # AnswerOnlyLoss keeps the LM as .model
    if accelerator is not None and not accelerator.is_main_process:
        return
    folder.mkdir(parents=True, exist_ok=True)
    if adapter_names is not None:
        save_adapter(model, folder, state_dict={k: state[k] for k in adapter_names})
        return
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".saving-"))
    try:
        model.save_pretrained(staging, state_dict=state)
        tokenizer.save_pretrained(staging)
        new = {p.name for p in staging.iterdir()}
        for pattern in _WEIGHT_FILES:
            for old in folder.glob(pattern):
                if old.name not in new:
                    old.unlink()
        for p in staging.iterdir():
            p.replace(folder / p.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@torch.no_grad()
def weight_change(base_model, model) -> float:
    """How far the *base* weights moved: ||W - W0|| / ||W0|| over all parameters the models share.

    For the plugin methods (LoRA, LoRAMoE) the base is frozen, so this is 0 by construction: the paper links
    forgetting to large parameter change, and the plugins rule it out.
    """
    tuned = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items()}
    num = den = 0.0
    for k, w0 in base_model.state_dict().items():
        w = tuned[k].to(w0.device).float()
        num += (w - w0.float()).pow(2).sum().item()
        den += w0.float().pow(2).sum().item()
    return math.sqrt(num / den)
