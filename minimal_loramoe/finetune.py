"""One supervised fine-tuning loop for every method the book compares.

Methods (the keys used everywhere in the book and in ``reproduce``):

    full_ft                  every weight of the model trains (what the paper shows forgetting with)
    lora                     one LoRA of rank E*r on each FFN linear (same parameter count as the experts)
    gated_lora               that LoRA times one learned per-token sigmoid gate (a control, not in the paper)
    loramoe_no_lbc           LoRAMoE, cross-entropy only (what the official training script really runs)
    loramoe_official_lbc     LoRAMoE + the localized balancing loss exactly as the official code computes it
    loramoe                  LoRAMoE + the corrected localized balancing loss (the variant this book recommends)
    loramoe_uniform_router   LoRAMoE with its router frozen at zero, i.e. every gate exactly 1/E (a control)

Beyond the paper, SLIM (Han et al., 2025, arXiv 2410.07739) and its parts, all with the same E experts of rank r
as ``loramoe`` (so the same adapter parameters; only the router grows by the identity experts' rows):

    mixlora_top2             sparse LoRA-MoE: top-2 of the E experts, no constraint (MixLoRA-like)
    slim                     E LoRA + 2 identity experts, top-2, weight yielding, L1 penalty + DARE masks at eval
    slim_no_identity         slim without identity experts (hence without weight yielding, which yields to them)
    slim_no_yield            slim without weight yielding
    slim_no_merge            slim without dynamic merging (no L1 penalty, no DARE masks)

(each ablation removes one of SLIM's three parts; the settings are in ``METHOD_SETTINGS`` and any of them can be
overridden through ``FinetuneConfig``, e.g. ``mask_rate=0`` to evaluate slim without the masks.)

The loss is the cross-entropy on the answer tokens only (the prompt is context), plus, for LoRAMoE with a
constraint, the localized balancing loss summed over all LoRAMoE layers (Dou et al., 2024, Eq. 9), plus, with
``l1_weight > 0``, SLIM's L1 penalty on the adapters. With ``mask_rate > 0`` every evaluation sees the experts
DARE-masked (:func:`~minimal_loramoe.slim.dare_masked`); training always uses the unmasked experts.
The learning rate is constant after a short warm-up, so that evaluating one run after its first N examples is the
same as a separate run on N examples: one pass gives the whole "more SFT data" curve.
"""
import copy
import math
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm  # text bars: widget bars cannot render in the static book

from .balance import model_balance_loss
from .evaluate import answer_loss, encode_examples
from .inject import SLIM_DEFAULTS, adapter_layers, add_gated_lora, add_lora, add_loramoe
from .loramoe import check_slim_args
from .slim import dare_masked, l1_penalty
from .utils import get_device, set_seed

LBC_OF_METHOD = {"loramoe_official_lbc": "official", "loramoe": "corrected"}
# SLIM's settings per method, not tuned: the paper's K = 2 and 2 identity experts; 8 clusters per layer; masking
# rate p = 0.5 (the paper: too large hurts the tasks, too small does not stop forgetting); l1_weight = 10, so the
# penalty's gradient per adapter entry, 10 / (E r (d_in + d_out)) ~ 1e-3, is of the order of the cross-entropy's
# after a few dozen steps (1e-3 to 1e-2, measured on slim at lr 1e-3 on the cipher mix); at 1 it would be ~1 %.
_SLIM = dict(top_k=2, num_identity_experts=2, num_clusters=8, yield_scale=1.0, l1_weight=10.0, mask_rate=0.5)
METHOD_SETTINGS = {
    "mixlora_top2": dict(top_k=2),
    "slim": _SLIM,
    "slim_no_identity": {**_SLIM, "num_identity_experts": 0, "num_clusters": 0},
    "slim_no_yield": {**_SLIM, "num_clusters": 0},
    "slim_no_merge": {**_SLIM, "l1_weight": 0.0, "mask_rate": 0.0},
}
SLIM_METHODS = tuple(METHOD_SETTINGS)
METHODS = ("full_ft", "lora", "gated_lora", "loramoe_no_lbc", "loramoe_official_lbc", "loramoe",
           "loramoe_uniform_router") + SLIM_METHODS
# what a field left at None means for methods without an entry in METHOD_SETTINGS: plain LoRAMoE, no penalty
_DEFAULTS = {**SLIM_DEFAULTS, "l1_weight": 0.0, "mask_rate": 0.0}


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run. ``rank`` is per expert; LoRA and gated LoRA get rank ``num_experts*rank``.

    The SLIM fields (``top_k`` ... ``mask_rate``) left at None take the method's value from ``METHOD_SETTINGS``
    (plain LoRAMoE's for the other methods); ``l1_weight`` and ``mask_rate`` apply to any LoRAMoE-layer method.
    """
    method: str = "loramoe"
    lr: float = 5e-4
    batch_size: int = 32
    num_experts: int = 6
    rank: int = 4
    alpha: float = 32
    dropout: float = 0.0
    lbc_delta: float = 0.1
    lbc_beta: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    seed: int = 0
    top_k: int | None = None
    num_identity_experts: int | None = None
    num_clusters: int | None = None
    yield_scale: float | None = None
    l1_weight: float | None = None  # weight of slim.l1_penalty in the loss
    mask_rate: float | None = None  # DARE masking rate p at evaluation

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        settings = {**_DEFAULTS, **METHOD_SETTINGS.get(self.method, {})}
        for name, value in settings.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.method in ("full_ft", "lora", "gated_lora") and any(
                getattr(self, k) != v for k, v in _DEFAULTS.items()):
            raise ValueError(f"top_k, num_identity_experts, num_clusters, yield_scale, l1_weight and mask_rate need "
                             f"a LoRAMoE-layer method, not method={self.method!r}")
        check_slim_args(self.num_experts, self.top_k, self.num_identity_experts, self.num_clusters,
                         self.yield_scale)
        if isinstance(self.l1_weight, bool) or not isinstance(self.l1_weight, (int, float)) or self.l1_weight < 0:
            raise ValueError(f"l1_weight must be a number >= 0, got {self.l1_weight!r}")
        if isinstance(self.mask_rate, bool) or not isinstance(self.mask_rate, (int, float)) or \
                not 0 <= self.mask_rate < 1:
            raise ValueError(f"mask_rate must be a number in [0, 1), got {self.mask_rate!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")


def prepare_model(base_model, config: FinetuneConfig):
    """A fresh copy of ``base_model`` set up for ``config.method`` (the base model itself is never touched)."""
    model = copy.deepcopy(base_model)
    c = config
    if c.method == "full_ft":
        return model.requires_grad_(True)
    if c.method == "lora":
        return add_lora(model, rank=c.num_experts * c.rank, alpha=c.alpha, dropout=c.dropout)
    if c.method == "gated_lora":
        return add_gated_lora(model, rank=c.num_experts * c.rank, alpha=c.alpha, dropout=c.dropout)
    model = add_loramoe(model, num_experts=c.num_experts, rank=c.rank, alpha=c.alpha, dropout=c.dropout,
                        top_k=c.top_k, num_identity_experts=c.num_identity_experts, num_clusters=c.num_clusters,
                        yield_scale=c.yield_scale)
    if c.method == "loramoe_uniform_router":
        for layer in adapter_layers(model).values():  # softmax(0) = 1/E for every expert, and it stays there
            torch.nn.init.zeros_(layer.router.weight)
            layer.router.weight.requires_grad_(False)
    return model


def finetune(base_model, tokenizer, dataset, config: FinetuneConfig, eval_every=None, eval_fn=None,
             device=None, progress: bool = True):
    """Fine-tune a copy of ``base_model`` on ``dataset`` (columns prompt, answer, type) for one pass.

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
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / config.warmup_steps))
    lbc = LBC_OF_METHOD.get(config.method)

    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)).tolist()
    checkpoints = sorted(set(eval_every or []))
    if checkpoints and checkpoints[-1] > n:
        raise ValueError(f"eval_every asks for {checkpoints[-1]} examples but the dataset has only {n}")
    history = {"config": asdict(config), "loss": [], "lbc": [], "l1": [], "evals": {}}
    steps = math.ceil(n / config.batch_size)
    bar = tqdm(range(steps), desc=config.method, disable=not progress, leave=False)
    for step in bar:
        idx = order[step * config.batch_size:(step + 1) * config.batch_size]
        rows = dataset[idx]
        batch = {k: v.to(device) for k, v in encode_examples(tokenizer, rows["prompt"], rows["answer"],
                                                             add_eos=True).items()}
        loss = answer_loss(model, batch)  # cross-entropy on the answer tokens only
        total = loss
        if lbc is not None:
            aux = model_balance_loss(model, torch.tensor(rows["type"], device=device),
                                     attention_mask=batch["attention_mask"], delta=config.lbc_delta,
                                     beta=config.lbc_beta, variant=lbc)
            total = loss + aux
            history["lbc"].append(aux.item())
        if config.l1_weight > 0:
            l1 = config.l1_weight * l1_penalty(model)
            total = total + l1
            history["l1"].append(l1.item())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
        history["loss"].append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        seen = min(n, (step + 1) * config.batch_size)
        while checkpoints and seen >= checkpoints[0]:
            if eval_fn and config.mask_rate > 0:  # SLIM evaluates the DARE-masked experts (same masks each time)
                with dare_masked(model, config.mask_rate, config.seed):
                    history["evals"][checkpoints[0]] = eval_fn(model, checkpoints[0])
            else:
                history["evals"][checkpoints[0]] = eval_fn(model, checkpoints[0]) if eval_fn else None
            model.train()
            checkpoints.pop(0)
    return model.eval(), history


@torch.no_grad()
def weight_change(base_model, model) -> float:
    """How far the *base* weights moved: ||W - W0|| / ||W0|| over all parameters the models share.

    For the plugin methods (LoRA, LoRAMoE) the base is frozen, so this is 0 by construction: the paper links
    forgetting to large parameter change, and the plugins rule it out.
    """
    tuned = {k.replace(".base.", "."): v for k, v in model.state_dict().items()}
    num = den = 0.0
    for k, w0 in base_model.state_dict().items():
        w = tuned[k].to(w0.device).float()
        num += (w - w0.float()).pow(2).sum().item()
        den += w0.float().pow(2).sum().item()
    return math.sqrt(num / den)
