"""Fine-tune any Hugging Face causal LM with LoRAMoE (or any method of the book): ``python -m minimal_loramoe.train``.

    python -m minimal_loramoe.train --model data/tiny_llama --data sft.jsonl --method loramoe --out runs/a
    accelerate launch --num_processes 2 -m minimal_loramoe.train ...    # the same run on 2 processes (DDP)

The data is a jsonl file with one sample per line, ``{"prompt": "...", "answer": "...", "type": 1}``: type 1 = a
world-knowledge sample, 0 = any other task -- the sample types the localized balancing constraint needs
(Dou et al., 2024, Sec. 3.3). Other keys are ignored. The loss is the cross-entropy on the answer tokens (and the
eos token after them) only: the prompt is context. The loop is the book's one SFT loop,
:func:`minimal_loramoe.finetune.sft_loop`, run through ``accelerate``, so the same command trains on one CPU, one
GPU, or many processes -- whatever ``accelerate launch`` (and ``accelerate config``) set up.

What it writes into ``--out``:

* ``adapter.safetensors``: the adapters only, as ``save_loramoe`` writes them (load them with
  ``add_loramoe`` + ``load_loramoe`` and the same ``--num-experts/--rank/--alpha``, or with :func:`load_trained`).
  For ``--method full_ft`` the whole model instead, with ``save_pretrained`` (``config.json``,
  ``model.safetensors``) and the tokenizer: ``--out`` is then a model folder for ``from_pretrained``;
* ``settings.json``: every setting it ran with (the ``FinetuneConfig``, model, data, processes, global batch);
* ``history.json``: the answer-only cross-entropy, the balancing loss and SLIM's L1 penalty of every step (the
  last two only for the methods that have them).

``--method`` is any method of :mod:`minimal_loramoe.finetune`, SLIM's included (``--method slim``, with the
settings of ``finetune.METHOD_SETTINGS``; ``--top-k``, ``--num-identity-experts``, ``--num-clusters``,
``--yield-scale``, ``--l1-weight`` and ``--mask-rate`` override them). This command does not evaluate, so
``--mask-rate`` is only recorded: use the trained SLIM model as it was meant to be evaluated, DARE-masked, with
``with slim.dare_masked(model, config.mask_rate, config.seed): ...``.

``--batch-size`` is per process. With P processes every step trains on a global batch of P x batch-size samples:
the batches a one-process run with batch size P x batch-size (same seed) would use, process r training on the
r-th slice of each. The losses are scaled so that the gradient DDP averages is the one-process gradient (see
``sft_loop``): P processes with ``--batch-size B`` train like one process with ``--batch-size P*B``, up to
floating-point rounding (and except for dropout masks, which each process draws for itself). One more exception:
SLIM's weight yielding (``num_clusters > 0``: ``slim``, ``slim_no_merge``) updates its cluster statistics, buffers,
from the tokens each process sees, and DDP broadcasts process 0's buffers at every step, so with several processes
the clusters follow process 0's slices only. The L1 penalty needs no rescaling (see ``sft_loop``).
"""
import argparse
import json
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from .finetune import COLUMNS, FinetuneConfig, plain_encoder, prepare_model, sft_loop
from .evaluate import encode_examples
from .inject import ADAPTER_FILE, load_loramoe
from .utils import set_seed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SETTINGS_FILE, HISTORY_FILE = "settings.json", "history.json"


def read_sft_jsonl(path):
    """The samples of a jsonl file as a ``datasets.Dataset`` with columns prompt, answer, type.

    Refuses (``ValueError`` naming the line) a line that is not a JSON object with a string prompt, a non-empty
    string answer and a type of 0 or 1, and a file without samples.
    """
    from datasets import Dataset

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data: no file at {str(path)!r} (a jsonl file, one {{'prompt', 'answer', 'type'}} "
                         "object per line)")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"--data {path}, line {i}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"--data {path}, line {i}: must be a JSON object with the keys {COLUMNS}")
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"--data {path}, line {i}: missing {missing}; every line needs the keys {COLUMNS}")
        if not isinstance(row["prompt"], str) or not isinstance(row["answer"], str) or not row["answer"]:
            raise ValueError(f"--data {path}, line {i}: prompt must be a string and answer a non-empty string")
        if type(row["type"]) is not int or row["type"] not in (0, 1):  # (a JSON true is not a type)
            raise ValueError(f"--data {path}, line {i}: type must be 0 (other task) or 1 (world knowledge), "
                             f"got {row['type']!r}")
        rows.append({c: row[c] for c in COLUMNS})
    if not rows:
        raise ValueError(f"--data {path}: the file holds no samples")
    return Dataset.from_list(rows)


def check_model_dir(path) -> Path:
    """``path`` if it is a Hugging Face model folder (it has a ``config.json``), else a ``ValueError``."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"--model: no Hugging Face model folder at {str(path)!r} (a folder with config.json, "
                         "the weights and the tokenizer, as save_pretrained writes it)")
    return path


def chat_encoder(system: str | None = None):
    """A batch encoder for chat (instruct) models: each prompt becomes one user turn rendered with the tokenizer's
    own chat template (after a system message, if given), and the answer ends with ``tokenizer.eos_token`` --
    in instruct models usually the end-of-turn token; check that it is for yours."""
    head = [] if system is None else [{"role": "system", "content": system}]

    def encode(tokenizer, prompts, answers):
        rendered = [tokenizer.apply_chat_template(head + [{"role": "user", "content": p}], tokenize=False,
                                                  add_generation_prompt=True) for p in prompts]
        return encode_examples(tokenizer, rendered, answers, add_eos=True, prompt_special_tokens=False)

    return encode


def build_parser() -> argparse.ArgumentParser:
    d = FinetuneConfig()  # the defaults live in one place
    p = argparse.ArgumentParser(prog="python -m minimal_loramoe.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face model folder (config.json, weights, tokenizer)")
    p.add_argument("--data", required=True, help="jsonl file, one {prompt, answer, type} object per line")
    p.add_argument("--out", required=True, help="folder to write the adapters (or model), settings and history to")
    p.add_argument("--method", default="loramoe", help="one of finetune.METHODS")
    p.add_argument("--steps", type=int, help="optimizer steps (default: one pass over the data in full batches)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per process and step")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-experts", type=int, default=d.num_experts, help="LoRAMoE experts per linear")
    p.add_argument("--rank", type=int, default=d.rank, help="rank per expert (LoRA: num-experts x rank)")
    p.add_argument("--alpha", type=float, default=d.alpha)
    p.add_argument("--dropout", type=float, default=d.dropout, help="adapter dropout")
    p.add_argument("--lbc-delta", type=float, default=d.lbc_delta, help="balancing constraint: delta")
    p.add_argument("--lbc-beta", type=float, default=d.lbc_beta, help="balancing constraint: weight beta")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--schedule", default="cosine", help="learning-rate schedule after warm-up: constant or cosine")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    slim = "default: the method's (finetune.METHOD_SETTINGS; plain LoRAMoE: off)"
    p.add_argument("--top-k", type=int, help=f"SLIM: experts kept per token ({slim})")
    p.add_argument("--num-identity-experts", type=int, help=f"SLIM: identity experts per linear ({slim})")
    p.add_argument("--num-clusters", type=int, help=f"SLIM: clusters of weight yielding ({slim})")
    p.add_argument("--yield-scale", type=float, help=f"SLIM: weight yielding's bonus per sigma ({slim})")
    p.add_argument("--l1-weight", type=float, help=f"SLIM: weight of the L1 penalty on the adapters ({slim})")
    p.add_argument("--mask-rate", type=float, help=f"SLIM: DARE masking rate at evaluation, recorded only ({slim})")
    p.add_argument("--chat", action="store_true", help="render prompts with the tokenizer's chat template")
    p.add_argument("--system", help="with --chat: a system message before every prompt")
    p.add_argument("--dtype", default="float32", help=f"weights of the loaded model: one of {tuple(DTYPES)}")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is there")
    p.add_argument("--find-unused-parameters", action="store_true",
                   help="DDP: for models with trainable parameters that some forward passes do not use")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> dict:
    """Run the command (``argv`` as on the command line); returns ``{"settings", "history"}``."""
    args = build_parser().parse_args(argv)
    # 1. everything that can be checked without loading anything
    config = FinetuneConfig(method=args.method, lr=args.lr, batch_size=args.batch_size, num_experts=args.num_experts,
                            rank=args.rank, alpha=args.alpha, dropout=args.dropout, lbc_delta=args.lbc_delta,
                            lbc_beta=args.lbc_beta, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                            seed=args.seed, steps=args.steps, schedule=args.schedule, top_k=args.top_k,
                            num_identity_experts=args.num_identity_experts, num_clusters=args.num_clusters,
                            yield_scale=args.yield_scale, l1_weight=args.l1_weight, mask_rate=args.mask_rate)
    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {tuple(DTYPES)}, got {args.dtype!r}")
    if args.system is not None and not args.chat:
        raise ValueError("--system needs --chat (a system message is part of a chat template)")
    model_dir = check_model_dir(args.model)
    data = read_sft_jsonl(args.data)

    # 2. the processes (one, or as many as `accelerate launch` started) and the global batch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # Frozen parameters (the backbone, loramoe_uniform_router's router) have requires_grad=False, so DDP does
    # not even track them; every trainable adapter parameter takes part in every forward pass (the router is a
    # dense softmax, and with SLIM's top-K the unchosen experts still ride along in the same matmuls, gate 0).
    # find_unused_parameters costs a graph traversal per step and is needed only for unusual models.
    accelerator = Accelerator(cpu=args.cpu, kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=args.find_unused_parameters)])
    global_batch = config.batch_size * accelerator.num_processes
    if global_batch > len(data):
        raise ValueError(f"--batch-size {config.batch_size} x {accelerator.num_processes} processes = "
                         f"{global_batch} samples per step, more than the {len(data)} samples of --data")
    if config.steps is None:  # one pass in full global batches: the same steps whatever the number of processes
        config = replace(config, steps=len(data) // global_batch)

    # 3. model and tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if args.chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--chat: the tokenizer in {str(model_dir)!r} has no chat template")
    set_seed(config.seed)  # the same adapter initialisation in every process
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[args.dtype])
    model = prepare_model(model, config, copy_model=False)
    set_seed(config.seed + accelerator.process_index)  # but each process its own dropout masks

    # 4. train and save
    t0 = time.time()
    out = Path(args.out)
    history = sft_loop(model, tokenizer, data, config, encode=chat_encoder(args.system) if args.chat else plain_encoder,
                       accelerator=accelerator, save_to=out, progress=not args.no_progress)
    settings = {"config": asdict(config), "model": str(model_dir), "data": str(args.data), "chat": args.chat,
                "system": args.system, "dtype": args.dtype, "num_processes": accelerator.num_processes,
                "global_batch_size": global_batch, "distributed_type": str(accelerator.distributed_type),
                "seconds": round(time.time() - t0, 1), "torch": torch.__version__}
    if accelerator.is_main_process:
        (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=1))
        (out / HISTORY_FILE).write_text(json.dumps({k: history[k] for k in ("loss", "lbc", "l1")}))
        lbc = f", LBC {history['lbc'][-1]:.4f}" if history["lbc"] else ""
        print(f"{config.method}: {config.steps} steps of {global_batch} samples on {accelerator.num_processes} "
              f"process(es) in {settings['seconds']:.0f} s; last loss {history['loss'][-1]:.4f}{lbc}; wrote {out}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"settings": settings, "history": history}


def load_trained(out, model_dir=None, device=None):
    """The model a run of this command trained, ready to generate: ``(model, tokenizer)``, in eval mode.

    Reads ``settings.json`` in ``out``; loads the base model from ``model_dir`` (default: the ``--model`` of the
    run), adds the same adapters and loads ``adapter.safetensors`` (for ``full_ft``: loads ``out`` itself).
    The model comes unmasked; a SLIM run with ``mask_rate > 0`` is meant to be used DARE-masked (module docstring).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if not (out / SETTINGS_FILE).is_file():
        raise ValueError(f"out: no {SETTINGS_FILE} in {str(out)!r}; is it the --out folder of a training run?")
    settings = json.loads((out / SETTINGS_FILE).read_text())
    known = {f.name for f in fields(FinetuneConfig)}
    config = FinetuneConfig(**{k: v for k, v in settings["config"].items() if k in known})
    dtype = DTYPES[settings["dtype"]]
    if config.method == "full_ft":
        model = AutoModelForCausalLM.from_pretrained(out, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(out)
    else:
        base = check_model_dir(model_dir or settings["model"])
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = prepare_model(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), config, copy_model=False)
        load_loramoe(model, out / ADAPTER_FILE)
    return model.to(device or "cpu").eval(), tokenizer


def cli(argv=None) -> None:
    """``main`` for the command line: bad input ends with one clear line instead of a traceback."""
    try:
        main(argv)
    except ValueError as err:
        sys.exit(f"python -m minimal_loramoe.train: error: {err}")


if __name__ == "__main__":
    cli()
