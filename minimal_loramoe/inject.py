"""Put adapters into a model: ``add_loramoe`` (and ``add_lora``/``add_gated_lora`` for comparisons), and save or
load only the adapter weights with safetensors.

LoRAMoE is a plugin (Dou et al., 2024, Sec. 3.2): the backbone is frozen and a LoRAMoE layer replaces each FFN
linear -- in LLaMA ``gate_proj``, ``up_proj`` and ``down_proj`` of every decoder layer; attention is untouched.
"""
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .lora import GatedLoRALinear, LoRALinear
from .loramoe import LoRAMoELinear

FFN_MODULES = ("gate_proj", "up_proj", "down_proj")
ADAPTER_TYPES = {"loramoe": LoRAMoELinear, "lora": LoRALinear, "gated_lora": GatedLoRALinear}
ADAPTER_LAYERS = tuple(ADAPTER_TYPES.values())
CONFIG_ATTR = "minimal_loramoe_config"  # where add_* records its settings on the model
ADAPTER_FILE = "adapter.safetensors"  # the file name python -m minimal_loramoe.train writes
SLIM_DEFAULTS = dict(top_k=None, num_identity_experts=0, num_clusters=0, yield_scale=1.0)  # = plain LoRAMoE


def _inject(model: nn.Module, adapter: str, target_modules, **settings) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    target_modules = tuple(target_modules)
    if hasattr(model, CONFIG_ATTR):
        raise ValueError("model already has adapters; start again from a fresh copy of the base model")
    # PEFT's rule: a module matches when the last part of its name is one of target_modules.
    targets = [name for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules]
    if not targets:
        linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"target_modules={target_modules!r} matches no nn.Linear in the model; "
                         f"its linear layers are named {linears}")
    model.requires_grad_(False)  # freeze the whole backbone; only the new adapter parameters will train
    make = ADAPTER_TYPES[adapter]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        setattr(parent, child, make(old, **settings).train(old.training))  # keep the model's train/eval mode
    setattr(model, CONFIG_ATTR, {"adapter": adapter, "target_modules": list(target_modules), **settings})
    return model


def add_loramoe(model: nn.Module, num_experts: int = 6, rank: int = 4, alpha: float = 32, dropout: float = 0.05,
                target_modules=FFN_MODULES, top_k: int | None = None, num_identity_experts: int = 0,
                num_clusters: int = 0, yield_scale: float = 1.0) -> nn.Module:
    """Replace every ``nn.Linear`` named in ``target_modules`` by a :class:`LoRAMoELinear` and freeze the rest.

    Works on any ``nn.Module``; on Hugging Face LLaMA, Mistral, Qwen2, ... the defaults hit the FFN linears.
    Because every ``lora_B`` starts at zero, the returned model computes exactly what it computed before.
    ``top_k``, ``num_identity_experts``, ``num_clusters`` and ``yield_scale`` are SLIM's options (see
    :class:`LoRAMoELinear`); they are recorded with the other settings only when they differ from the defaults.
    Modifies ``model`` in place and returns it.
    """
    slim = {k: v for k, v in dict(top_k=top_k, num_identity_experts=num_identity_experts, num_clusters=num_clusters,
                                  yield_scale=yield_scale).items() if v != SLIM_DEFAULTS[k]}
    return _inject(model, "loramoe", target_modules, num_experts=num_experts, rank=rank, alpha=alpha,
                   dropout=dropout, **slim)


def add_lora(model: nn.Module, rank: int = 24, alpha: float = 32, dropout: float = 0.05,
             target_modules=FFN_MODULES) -> nn.Module:
    """Plain LoRA on the same linears (the baseline LoRAMoE is compared with)."""
    return _inject(model, "lora", target_modules, rank=rank, alpha=alpha, dropout=dropout)


def add_gated_lora(model: nn.Module, rank: int = 24, alpha: float = 32, dropout: float = 0.05,
                   target_modules=FFN_MODULES) -> nn.Module:
    """LoRA times one learned per-token sigmoid gate per linear (a control, see :class:`GatedLoRALinear`)."""
    return _inject(model, "gated_lora", target_modules, rank=rank, alpha=alpha, dropout=dropout)


def adapter_layers(model: nn.Module) -> dict:
    """``{name: layer}`` for every adapter layer in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ADAPTER_LAYERS)}


def adapter_state_dict(model: nn.Module) -> dict:
    """Only the adapters: every parameter and buffer (experts, routers, gates, SLIM's clusters) that is not part
    of a frozen base."""
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("model has no adapters: call add_loramoe(model) first")
    return {f"{name}.{p}": t for name, layer in layers.items()
            for p, t in [*layer.named_parameters(), *layer.named_buffers()] if not p.startswith("base.")}


def save_loramoe(model: nn.Module, path, state_dict: dict | None = None) -> None:
    """Write only the adapters (and the settings they were built with, as metadata) to one safetensors file.

    Buffers are included: the cluster statistics of SLIM's weight yielding belong to the trained adapter.
    ``state_dict``: the adapter tensors to write instead of the model's own (parameters and buffers), under the
    same names -- for a model whose parameters are sharded across processes (FSDP, DeepSpeed ZeRO-3), where the
    full tensors come from ``accelerator.get_state_dict``.
    """
    names = adapter_state_dict(model)
    if state_dict is None:
        state_dict = names
    elif set(state_dict) != set(names):
        missing, unexpected = sorted(set(names) - set(state_dict)), sorted(set(state_dict) - set(names))
        raise ValueError(f"state_dict must hold exactly the model's adapter tensors; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, os.fspath(path), metadata={"minimal_loramoe": json.dumps(getattr(model, CONFIG_ATTR))})


def load_loramoe(model: nn.Module, path) -> nn.Module:
    """Load adapters saved by :func:`save_loramoe` into a model prepared with the same ``add_*`` settings.

    Refuses (``ValueError``) a file whose settings, tensor names or shapes do not fit the model; never unpickles.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no adapter file at path={path!r}")
    expected = adapter_state_dict(model)
    with safe_open(path, framework="pt") as f:
        meta = (f.metadata() or {}).get("minimal_loramoe")
        if meta is None:
            raise ValueError(f"{path!r} is not an adapter file written by save_loramoe (no minimal_loramoe metadata)")
        saved, ours = json.loads(meta), getattr(model, CONFIG_ATTR)
        if saved != ours:
            diff = {k: (saved.get(k), ours.get(k)) for k in set(saved) | set(ours) if saved.get(k) != ours.get(k)}
            raise ValueError(f"adapter file {path!r} was saved with other settings; (file, model) differ in {diff}")
        keys = set(f.keys())
        if keys != set(expected):
            raise ValueError(f"adapter file {path!r} does not fit the model: missing "
                             f"{sorted(set(expected) - keys)[:5]}, unexpected {sorted(keys - set(expected))[:5]}")
        with torch.no_grad():
            for k, param in expected.items():
                t = f.get_tensor(k)
                if t.shape != param.shape:
                    raise ValueError(f"tensor {k!r} has shape {tuple(t.shape)} in the file, "
                                     f"{tuple(param.shape)} in the model")
                param.copy_(t)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
