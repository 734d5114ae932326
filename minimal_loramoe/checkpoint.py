"""Checkpoints of a training run: one safetensors file with everything :func:`~minimal_loramoe.finetune.sft_loop`
needs to continue a stopped run as if it had never stopped.

What the file holds (tensors; no pickle):

    model.<name>          every trainable parameter and every adapter buffer (SLIM's clusters)
    optim.<i>.<key>       AdamW's state of the i-th trainable parameter (step, exp_avg, exp_avg_sq)
    rng.cpu.<rank>        each process's torch CPU random state (dropout masks, SLIM's cluster seeding)
    rng.cuda.<rank>       ... and its CUDA random state, on a GPU

and as metadata (JSON): the steps done, the loss history so far, the ``FinetuneConfig``, the optimizer's
hyper-parameters, the number of processes and whatever the caller adds (the training command: a hash of the data).
It is written to a temporary file and renamed, so a crash while writing leaves the previous checkpoint whole.
"""
import json
from dataclasses import asdict

import torch
from safetensors import safe_open

from .inject import adapter_layers, adapter_state_dict
from .utils import atomic_save_file

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "minimal_loramoe checkpoint 1"


def model_state(model) -> dict:
    """``{name: tensor}`` of what a run changes: trainable parameters and adapter buffers."""
    state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if adapter_layers(model):
        state.update(adapter_state_dict(model))
    return state


def save_checkpoint(path, model, optimizer, step: int, history: dict, config, rng_states: list, extra: dict) -> None:
    """Write the checkpoint after ``step`` optimizer steps to ``path`` (atomically). ``rng_states``: one
    ``(cpu_state, cuda_state or None)`` per process, in process order."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model_state(model).items()}
    opt = optimizer.state_dict()
    for i, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{i}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    for rank, (cpu, cuda) in enumerate(rng_states):
        tensors[f"rng.cpu.{rank}"] = cpu
        if cuda is not None:
            tensors[f"rng.cuda.{rank}"] = cuda
    meta = {"format": FORMAT, "step": step, "history": {k: history[k] for k in ("loss", "lbc", "l1")},
            "config": asdict(config), "param_groups": opt["param_groups"], "num_processes": len(rng_states), **extra}
    atomic_save_file(tensors, path, metadata={"minimal_loramoe_checkpoint": json.dumps(meta)})


def read_checkpoint(path) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a checkpoint; one ``ValueError`` naming the file for anything unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get("minimal_loramoe_checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors' own errors for a corrupt or truncated file
        raise ValueError(f"checkpoint {str(path)!r} is not a readable safetensors file ({err})") from None
    try:
        meta = json.loads(meta) if meta is not None else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a checkpoint written by sft_loop")
    return tensors, meta


def check_resumable(meta: dict, config, num_processes: int, extra: dict, path) -> None:
    """Refuse (``ValueError``) to continue a run with other settings, processes or data than the checkpoint's."""
    mine = {"config": asdict(config), "num_processes": num_processes, **extra}
    theirs = {k: meta.get(k) for k in mine}
    theirs["config"] = {**mine["config"], **(meta.get("config") or {})}
    diff = {k: (theirs[k], mine[k]) for k in mine if k != "config" and theirs[k] != mine[k]}
    diff.update({k: (theirs["config"][k], v) for k, v in mine["config"].items() if theirs["config"][k] != v})
    if diff:
        raise ValueError(f"--resume: the checkpoint {str(path)!r} was written by a run with other settings; "
                         f"(checkpoint, this run) differ in {diff}")


@torch.no_grad()
def restore(tensors: dict, meta: dict, model, optimizer, path) -> int:
    """Load parameters and optimizer state (every name and shape checked first); returns the steps done."""
    mine = model_state(model)
    saved = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    if set(saved) != set(mine) or any(saved[k].shape != v.shape for k, v in mine.items()):
        raise ValueError(f"checkpoint {str(path)!r} does not fit the model (other parameters or shapes)")
    for k, v in mine.items():
        v.copy_(saved[k])
    state = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, key = k.split(".", 2)
            state.setdefault(int(i), {})[key] = v
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return int(meta["step"])


def rng_state() -> tuple:
    """This process's (CPU, CUDA or None) torch random states."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def set_rng_state(tensors: dict, rank: int) -> None:
    torch.set_rng_state(tensors[f"rng.cpu.{rank}"])
    if f"rng.cuda.{rank}" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{rank}"])
