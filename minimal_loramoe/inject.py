"""Put adapters into a model: ``add_loramoe`` (and ``add_lora``/``add_gated_lora`` for comparisons), and save or
load only the adapter weights with safetensors.

LoRAMoE is a plugin (Dou et al., 2024, Sec. 3.2): the backbone is frozen and a LoRAMoE layer replaces each FFN
linear -- in LLaMA ``gate_proj``, ``up_proj`` and ``down_proj`` of every decoder layer; attention is untouched.
Other architectures name their feed-forward linears differently (``config.TARGET_MODULES``).

Two ways to store adapters, both safetensors (never a pickle), both loaded all or nothing (every name and shape is
checked before any weight is written):

* an adapter *folder* in PEFT's layout (:func:`save_adapter`, :func:`load_adapter`): ``adapter_config.json``
  (the :class:`~minimal_loramoe.config.AdapterConfig`) and ``adapter_model.safetensors`` with PEFT's tensor names
  (``base_model.model.<module>.lora_A.weight``); a plain-LoRA folder is a PEFT LoRA adapter;
* one file (:func:`save_adapter_file`, :func:`load_adapter_file`) with the config in the file's metadata.
"""
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .config import (CONFIG_FILE, FFN_MODULES, WEIGHTS_FILE, AdapterConfig, absolute_path,  # noqa: F401
                     default_target_modules)
from .lora import LINEAR_TYPES, GatedLoRALinear, LoRALinear, linear_features
from .loramoe import LoRAMoELinear
from .utils import atomic_save_file

ADAPTER_TYPES = {"LORAMOE": LoRAMoELinear, "LORA": LoRALinear, "GATED_LORA": GatedLoRALinear}
ADAPTER_LAYERS = tuple(ADAPTER_TYPES.values())
CONFIG_ATTR = "minimal_loramoe_config"  # where add_* keeps the AdapterConfig on the model
ADAPTER_FILE = "adapter.safetensors"  # the single file of save_adapter_file (and of training runs before the folders)
PEFT_PREFIX = "base_model.model."  # PEFT's names: base_model.model.<module name>.lora_A.weight
_D = AdapterConfig()  # the defaults of the add_* functions below come from here


def _layer_settings(config: AdapterConfig) -> dict:
    """The constructor arguments of one adapter layer of ``config``."""
    settings = dict(rank=config.r, alpha=config.lora_alpha, dropout=config.lora_dropout)
    if config.peft_type == "LORAMOE":
        settings.update(num_experts=config.num_experts, top_k=config.top_k,
                        num_identity_experts=config.num_identity_experts, num_clusters=config.num_clusters,
                        yield_scale=config.yield_scale)
    return settings


def find_targets(model: nn.Module, target_modules=None) -> dict:
    """``{name: module}`` of every module the adapters would wrap, without touching ``model``.

    PEFT's rule: a module matches an entry of ``target_modules`` when its name equals it or ends with "." + it.
    ``None``: the feed-forward linears of the model's architecture. Refuses (``ValueError``) an entry that matches
    nothing, a match that is not an ``nn.Linear`` or a transformers ``Conv1D``, and -- for the architecture's own
    names -- a feed-forward block matched only in part (one name matched in more layers than another).
    """
    default = target_modules is None
    if default:
        target_modules = default_target_modules(model)
    targets = tuple([target_modules] if isinstance(target_modules, str) else target_modules)
    found = {t: [] for t in targets}
    for name, module in model.named_modules():
        for t in targets:
            if name == t or name.endswith("." + t):
                found[t].append((name, module))
    wrong = [f"{n} ({type(m).__name__})" for ms in found.values() for n, m in ms if not isinstance(m, LINEAR_TYPES)]
    if wrong:
        raise ValueError(f"target_modules={list(targets)} matches modules that are not nn.Linear or Conv1D: "
                         f"{wrong[:3]}; adapters wrap linear layers only")
    missing = [t for t, ms in found.items() if not ms]
    if missing:
        linears = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)})
        why = (f" (the defaults of model_type {model.config.model_type!r}: its feed-forward block is matched only "
               "in part)" if default and len(missing) < len(targets) else "")
        raise ValueError(f"target_modules={list(targets)}: {missing} matches no nn.Linear or Conv1D in the model"
                         f"{why}; its linear layers are named {linears}")
    counts = {t: len(ms) for t, ms in found.items()}
    if default and len(set(counts.values())) > 1:
        raise ValueError(f"the feed-forward block of model_type {model.config.model_type!r} is matched only in part: "
                         f"{counts} matches per name; pass target_modules")
    matched = {n for ms in found.values() for n, _ in ms}
    return {n: m for n, m in model.named_modules() if n in matched}  # in the model's order


def add_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Replace every module ``config.target_modules`` names by an adapter layer of ``config.peft_type`` and freeze
    the rest. Modifies ``model`` in place, returns it, and keeps the resolved config (target modules, base model)
    as ``model.minimal_loramoe_config``. Every ``lora_B`` starts at zero: the model computes what it computed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"config must be an AdapterConfig, got {type(config).__name__}")
    if hasattr(model, CONFIG_ATTR):
        raise ValueError("model already has adapters; start again from a fresh copy of the base model")
    targets = find_targets(model, config.target_modules)
    model.requires_grad_(False)  # freeze the whole backbone; only the new adapter parameters will train
    make, settings = ADAPTER_TYPES[config.peft_type], _layer_settings(config)
    for name, old in targets.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, make(old, **settings).train(old.training))  # keep the mode
    setattr(model, CONFIG_ATTR, _resolved(model, config, targets))
    return model


def _resolved(model, config: AdapterConfig, targets: dict) -> AdapterConfig:
    """``config`` with the target modules used, the base model's class and path filled in."""
    names = config.target_modules or default_target_modules(model)
    path = config.base_model_name_or_path or getattr(getattr(model, "config", None), "name_or_path", None) or None
    return replace(config, target_modules=list(names),
                   fan_in_fan_out=any(not isinstance(m, nn.Linear) for m in targets.values()),
                   base_model_name_or_path=absolute_path(path) if path else None,
                   base_model_class=config.base_model_class or type(model).__name__)


def add_loramoe(model: nn.Module, num_experts: int = _D.num_experts, rank: int = _D.r, alpha: float = _D.lora_alpha,
                dropout: float = _D.lora_dropout, target_modules=None, top_k: int | None = _D.top_k,
                num_identity_experts: int = _D.num_identity_experts, num_clusters: int = _D.num_clusters,
                yield_scale: float = _D.yield_scale) -> nn.Module:
    """Replace every ``nn.Linear`` named in ``target_modules`` by a :class:`LoRAMoELinear` and freeze the rest.

    Works on any ``nn.Module``; ``target_modules=None`` takes the feed-forward linears of the model's architecture
    (``config.TARGET_MODULES``; LLaMA's names for a module without a Hugging Face config). Because every
    ``lora_B`` starts at zero, the returned model computes exactly what it computed before. ``top_k``,
    ``num_identity_experts``, ``num_clusters`` and ``yield_scale`` are SLIM's options (see :class:`LoRAMoELinear`).
    The defaults are :class:`~minimal_loramoe.config.AdapterConfig`'s. Modifies ``model`` in place and returns it.
    """
    return add_adapters(model, AdapterConfig("LORAMOE", r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                             target_modules=target_modules, num_experts=num_experts, top_k=top_k,
                                             num_identity_experts=num_identity_experts, num_clusters=num_clusters,
                                             yield_scale=yield_scale))


def add_lora(model: nn.Module, rank: int = _D.num_experts * _D.r, alpha: float = _D.lora_alpha,
             dropout: float = _D.lora_dropout, target_modules=None) -> nn.Module:
    """Plain LoRA on the same linears (the baseline LoRAMoE is compared with); the default rank is that of all the
    default experts together, ``num_experts * r``."""
    return add_adapters(model, AdapterConfig("LORA", r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                             target_modules=target_modules))


def add_gated_lora(model: nn.Module, rank: int = _D.num_experts * _D.r, alpha: float = _D.lora_alpha,
                   dropout: float = _D.lora_dropout, target_modules=None) -> nn.Module:
    """LoRA times one learned per-token sigmoid gate per linear (a control, see :class:`GatedLoRALinear`)."""
    return add_adapters(model, AdapterConfig("GATED_LORA", r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                             target_modules=target_modules))


def adapter_layers(model: nn.Module) -> dict:
    """``{name: layer}`` for every adapter layer in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ADAPTER_LAYERS)}


def adapter_config(model: nn.Module) -> AdapterConfig:
    """The :class:`AdapterConfig` the adapters of ``model`` were added with."""
    config = getattr(model, CONFIG_ATTR, None)
    if config is None or not adapter_layers(model):
        raise ValueError("model has no adapters: call add_loramoe(model) first")
    return config


def adapter_state_dict(model: nn.Module) -> dict:
    """Only the adapters: every parameter and buffer (experts, routers, gates, SLIM's clusters) that is not part
    of a frozen base layer."""
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("model has no adapters: call add_loramoe(model) first")
    return {f"{name}.{p}": t for name, layer in layers.items()
            for p, t in [*layer.named_parameters(), *layer.named_buffers()] if not p.startswith("base_layer.")}


def _expected_shapes(model: nn.Module, config: AdapterConfig) -> dict:
    """``{name: shape}`` of the adapter tensors ``config`` gives ``model`` -- its own if it has adapters, else those
    of adapter layers built on the meta device (no memory, no random numbers drawn), ``model`` untouched."""
    if adapter_layers(model):
        return {k: tuple(v.shape) for k, v in adapter_state_dict(model).items()}
    make, settings, shapes = ADAPTER_TYPES[config.peft_type], _layer_settings(config), {}
    for name, old in find_targets(model, config.target_modules).items():
        d_in, d_out = linear_features(old)
        with torch.device("meta"):
            probe = make(nn.Linear(d_in, d_out, bias=old.bias is not None), **settings)
        shapes.update({f"{name}.{p}": tuple(t.shape) for p, t in [*probe.named_parameters(), *probe.named_buffers()]
                       if not p.startswith("base_layer.")})
    return shapes


def _check_same_adapters(saved: AdapterConfig, model: nn.Module, source: str) -> None:
    """Refuse (``ValueError`` naming ``source``) adapters saved for another kind of model or with other settings
    than the model's own adapters. Dropout and the base model's path may differ."""
    recorded, ours = saved.base_model_class, type(model).__name__
    if recorded and recorded != ours:
        raise ValueError(f"{source} holds adapters trained on a {recorded} (base model "
                         f"{saved.base_model_name_or_path!r}), not on this {ours}")
    if adapter_layers(model):
        mine = adapter_config(model)
        ignore = {"lora_dropout", "base_model_name_or_path", "base_model_class"}
        a, b = asdict(saved), asdict(mine)
        diff = {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}
        if diff:
            raise ValueError(f"adapter file {source} was saved with other settings; (file, model) differ in {diff}")


def _read_tensors(path: str, rename=lambda k: k) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a safetensors file; one ``ValueError`` naming the file if it cannot be read."""
    try:
        with safe_open(path, framework="pt") as f:
            return {rename(k): f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for a corrupt or truncated file
        raise ValueError(f"{path!r} is not a readable safetensors file ({type(err).__name__}: {err})") from None


def _check_fit(tensors: dict, expected: dict, source: str) -> None:
    """Refuse (``ValueError`` naming ``source``) tensors whose names or shapes are not ``expected``'s."""
    if set(tensors) != set(expected):
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(f"adapter file {source} does not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != tuple(shape):
            raise ValueError(f"adapter file {source}: tensor {k!r} has shape {tuple(tensors[k].shape)} in the file, "
                             f"{tuple(shape)} in the model")


@torch.no_grad()
def _copy_into(model: nn.Module, tensors: dict) -> None:
    for k, t in adapter_state_dict(model).items():
        t.copy_(tensors[k])


# ------------------------------------------------------------------------------------------------ one file


def save_adapter_file(model: nn.Module, path, state_dict: dict | None = None) -> None:
    """Write only the adapters (and their :class:`AdapterConfig`, as metadata) to one safetensors file, atomically.

    Buffers are included: the cluster statistics of SLIM's weight yielding belong to the trained adapter.
    ``state_dict``: the adapter tensors to write instead of the model's own (parameters and buffers), under the
    same names -- for a model whose parameters are sharded across processes (FSDP, DeepSpeed ZeRO-3), where the
    full tensors come from ``accelerator.get_state_dict``.
    """
    tensors = _adapter_tensors(model, state_dict)
    config = adapter_config(model)
    atomic_save_file(tensors, os.fspath(path), metadata={"minimal_loramoe": json.dumps(config.to_dict())})


def _adapter_tensors(model, state_dict) -> dict:
    names = adapter_state_dict(model)
    if state_dict is None:
        state_dict = names
    elif set(state_dict) != set(names):
        missing, unexpected = sorted(set(names) - set(state_dict)), sorted(set(state_dict) - set(names))
        raise ValueError(f"state_dict must hold exactly the model's adapter tensors; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}


def _config_of_metadata(meta: str, source: str) -> AdapterConfig:
    """The config in a :func:`save_adapter_file` file: an AdapterConfig dict, or the ``{"adapter", "rank", "alpha",
    "dropout", ...}`` of files written before AdapterConfig existed."""
    try:
        d = json.loads(meta)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: its minimal_loramoe metadata is not valid JSON ({err.msg})") from None
    if isinstance(d, dict) and "adapter" in d:  # the older layout
        old = {"rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout"}
        d = {"peft_type": str(d.pop("adapter")).upper(), **{old.get(k, k): v for k, v in d.items()}}
    return AdapterConfig.from_dict(d, source=source)


def load_adapter_file(model: nn.Module, path) -> nn.Module:
    """Load adapters saved by :func:`save_adapter_file` into a model prepared with the same ``add_*`` settings.

    All or nothing: refuses (``ValueError`` naming the file) a corrupt file, one saved for another model class or
    with other settings (dropout may differ), or whose tensor names or shapes do not fit -- before any weight is
    written. Never unpickles.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no adapter file at path={path!r}")
    adapter_config(model)  # has adapters
    tensors, meta = _read_tensors(path)
    if "minimal_loramoe" not in meta:
        raise ValueError(f"{path!r} is not an adapter file written by save_adapter_file (no minimal_loramoe metadata)")
    _check_same_adapters(_config_of_metadata(meta["minimal_loramoe"], repr(path)), model, repr(path))
    _check_fit(tensors, _expected_shapes(model, adapter_config(model)), repr(path))
    _copy_into(model, tensors)
    return model


# ------------------------------------------------------------------------------------------ a PEFT folder


def to_peft_name(name: str) -> str:
    """Our tensor name -> PEFT's: ``model.layers.0.mlp.up_proj.lora_A`` -> ``base_model.model.model.layers.0.mlp.
    up_proj.lora_A.weight`` (PEFT's lora_A and lora_B are Linear modules; routers, gates, clusters keep theirs)."""
    return PEFT_PREFIX + name + (".weight" if name.endswith((".lora_A", ".lora_B")) else "")


def from_peft_name(name: str) -> str:
    """The inverse of :func:`to_peft_name`."""
    name = name.removeprefix(PEFT_PREFIX)
    return name.removesuffix(".weight") if name.endswith((".lora_A.weight", ".lora_B.weight")) else name


def save_adapter(model: nn.Module, folder, state_dict: dict | None = None) -> Path:
    """Write the adapters of ``model`` into ``folder`` in PEFT's layout: ``adapter_model.safetensors`` (PEFT's
    tensor names) and ``adapter_config.json`` (the :class:`AdapterConfig`), each atomically. ``state_dict``: as
    in :func:`save_adapter_file`. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = adapter_config(model)
    tensors = {to_peft_name(k): v for k, v in _adapter_tensors(model, state_dict).items()}
    atomic_save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    config.save(folder)
    return folder


def load_adapter(folder, model: nn.Module | None = None, dtype=None) -> nn.Module:
    """The model with the adapters of an adapter folder (:func:`save_adapter`, or a PEFT LoRA folder) loaded.

    ``model``: the base model to add them to (or a model that already has the same adapters); ``None`` loads the
    base model recorded in ``adapter_config.json`` (``base_model_name_or_path``) with ``AutoModelForCausalLM`` in
    ``dtype``. All or nothing: a missing or broken config, a corrupt weights file, a base model of another class
    than the one recorded, other settings, tensor names or shapes that do not fit -- one ``ValueError`` naming the
    file, raised before the model is changed.
    """
    folder = Path(folder)
    config = AdapterConfig.load(folder)
    weights = folder / WEIGHTS_FILE if folder.is_dir() else folder.parent / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"no adapter weights at {str(weights)!r} (an adapter folder holds {CONFIG_FILE} and "
                         f"{WEIGHTS_FILE})")
    if model is None:
        base = config.base_model_name_or_path
        if not base:
            raise ValueError(f"{str(weights.parent / CONFIG_FILE)!r} records no base_model_name_or_path: pass model")
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(base, **({"dtype": dtype} if dtype is not None else {}))
    source = repr(str(weights))
    _check_same_adapters(config, model, repr(str(weights.parent / CONFIG_FILE)))
    tensors, _ = _read_tensors(str(weights), rename=from_peft_name)
    _check_fit(tensors, _expected_shapes(model, config), source)  # before the model is changed
    if not adapter_layers(model):
        add_adapters(model, config)
    _copy_into(model, tensors)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
