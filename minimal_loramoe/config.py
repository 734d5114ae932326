"""``AdapterConfig``: every setting of one set of adapters, and the only place their defaults live.

Field names are PEFT's where PEFT has the setting (``peft_type``, ``r``, ``lora_alpha``, ``lora_dropout``,
``target_modules``, ``fan_in_fan_out``, ``base_model_name_or_path``); LoRAMoE's and SLIM's own settings sit beside
them. ``add_loramoe`` / ``add_lora`` / ``add_gated_lora`` build their layers from it, ``FinetuneConfig`` and the
training command take their adapter defaults from it, and it is saved with the weights (``adapter_config.json``,
PEFT's file name) and read back by the loaders. For ``peft_type="LORA"`` the file is exactly a PEFT LoRA config
(``PeftModel.from_pretrained`` loads the folder); the other types carry our fields and a ``peft_type`` PEFT does
not know.

Our names, PEFT's and the official LoRAMoE code's (github.com/Ablustrund/LoRAMoE: its ``LoraConfig`` in
``peft/tuners/lora.py``, the flags of ``run_loramoe.sh``):

    AdapterConfig / layer     PEFT                       official LoRAMoE
    peft_type                 peft_type ("LORA")         --
    r                         r                          r (--lora_rank), per expert
    lora_alpha                lora_alpha                 lora_alpha
    lora_dropout              lora_dropout               lora_dropout
    target_modules            target_modules             target_modules (--trainable)
    num_experts               --                         lora_nums (layer: lora_num)
    fan_in_fan_out            fan_in_fan_out             fan_in_fan_out
    base_model_name_or_path   base_model_name_or_path    --
    layer.base_layer          layer.base_layer           the layer itself (an nn.Linear subclass: .weight)
    layer.lora_A (E, r, d_in) lora_A["default"].weight   lora_A0 ... lora_A{E-1} (nn.Linear each)
    layer.router              --                         lora_route
    FinetuneConfig.lbc_delta  --                         blc_alpha
    FinetuneConfig.lbc_beta   --                         blc_weight
"""
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .utils import atomic_write_text

PEFT_TYPES = ("LORAMOE", "LORA", "GATED_LORA")
CONFIG_FILE = "adapter_config.json"   # PEFT's file names
WEIGHTS_FILE = "adapter_model.safetensors"

# The feed-forward linears of each architecture, by the model's ``config.model_type``. PEFT's rule: a module
# matches an entry when its full name equals it or ends with "." + entry.
_GLU = ("gate_proj", "up_proj", "down_proj")
TARGET_MODULES = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "olmo",
                     "olmo2", "granite", "cohere", "stablelm", "smollm3"), _GLU),
    "phi3": ("gate_up_proj", "down_proj"),          # gate and up fused into one linear, adapted as one
    "phi": ("fc1", "fc2"),
    "opt": ("fc1", "fc2"),
    "gpt_neox": ("dense_h_to_4h", "dense_4h_to_h"),
    "falcon": ("dense_h_to_4h", "dense_4h_to_h"),
    "bloom": ("dense_h_to_4h", "dense_4h_to_h"),
    "gptj": ("fc_in", "fc_out"),
    "gpt2": ("mlp.c_fc", "mlp.c_proj"),             # Conv1D; attn.c_proj is attention, not the feed-forward block
    "gpt_bigcode": ("mlp.c_fc", "mlp.c_proj"),
    "starcoder2": ("mlp.c_fc", "mlp.c_proj"),
}
FFN_MODULES = _GLU  # the feed-forward linears of LLaMA (and of models without a config, e.g. a plain nn.Module)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_slim_args(num_experts, top_k, num_identity_experts, num_clusters, yield_scale):
    """Raise a clear error for SLIM settings no LoRAMoE layer can be built with."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)
    if not is_int(num_identity_experts) or num_identity_experts < 0:
        raise ValueError(f"num_identity_experts must be an integer >= 0, got {num_identity_experts!r}")
    total = num_experts + num_identity_experts
    if top_k is not None and (not is_int(top_k) or not 1 <= top_k <= total):
        raise ValueError(f"top_k must be None (dense) or an integer in [1, {total}] (num_experts + "
                         f"num_identity_experts), got {top_k!r}")
    if not is_int(num_clusters) or num_clusters < 0:
        raise ValueError(f"num_clusters must be an integer >= 0 (0 = no weight yielding), got {num_clusters!r}")
    if num_clusters and not num_identity_experts:
        raise ValueError("num_clusters > 0 (weight yielding) needs num_identity_experts >= 1: the yielded weight "
                         "goes to the identity experts")
    if isinstance(yield_scale, bool) or not isinstance(yield_scale, (int, float)) or not 0 < yield_scale < math.inf:
        raise ValueError(f"yield_scale must be a number > 0 and finite, got {yield_scale!r}")


@dataclass
class AdapterConfig:
    """Settings of one set of adapters (module docstring: the names and where they come from).

    ``peft_type``: ``"LORAMOE"`` (E LoRA experts + router per linear), ``"LORA"`` or ``"GATED_LORA"`` (a control).
    ``r`` is the rank of each expert (of the one LoRA for LORA / GATED_LORA). ``target_modules=None``: the
    feed-forward linears of the model's architecture (``TARGET_MODULES``), resolved when the adapters are added;
    the config on a model with adapters always holds the list it used. ``top_k`` ... ``yield_scale``: SLIM's
    options (see ``LoRAMoELinear``), LORAMOE only. ``fan_in_fan_out`` is set when the targets are transformers
    ``Conv1D`` layers (GPT-2), whose weight is stored (d_in, d_out). ``base_model_name_or_path`` and
    ``base_model_class`` record the model the adapters were trained on (an absolute path, a class name).
    """
    peft_type: str = "LORAMOE"
    r: int = 4
    lora_alpha: float = 32
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    num_experts: int = 6
    top_k: int | None = None
    num_identity_experts: int = 0
    num_clusters: int = 0
    yield_scale: float = 1.0
    fan_in_fan_out: bool = False
    base_model_name_or_path: str | None = None
    base_model_class: str | None = None

    def __post_init__(self):
        if self.peft_type not in PEFT_TYPES:
            raise ValueError(f"peft_type must be one of {PEFT_TYPES}, got {self.peft_type!r}")
        for name, value in (("r (rank)", self.r), ("num_experts", self.num_experts)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not _is_number(self.lora_alpha) or self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha (alpha) must be a number > 0 and finite, got {self.lora_alpha!r}")
        if not _is_number(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout (dropout) must be a number in [0, 1), got {self.lora_dropout!r}")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                self.target_modules = [self.target_modules]
            self.target_modules = list(self.target_modules)
            if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
                raise ValueError(f"target_modules must be None (the architecture's feed-forward linears) or "
                                 f"non-empty module names, got {self.target_modules!r}")
        if self.peft_type != "LORAMOE" and (self.top_k, self.num_identity_experts, self.num_clusters,
                                            self.yield_scale) != (None, 0, 0, 1.0):
            raise ValueError(f"top_k, num_identity_experts, num_clusters and yield_scale are LoRAMoE settings, "
                             f"not for peft_type={self.peft_type!r}")
        check_slim_args(self.num_experts, self.top_k, self.num_identity_experts, self.num_clusters,
                        self.yield_scale)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    # ------------------------------------------------------------------------------------------ the file
    def to_dict(self) -> dict:
        """What ``adapter_config.json`` holds. LORA: exactly the keys of a PEFT LoRA config (our record of the base
        model class goes into PEFT's ``auto_mapping``); the other types: every field, with ``task_type``."""
        d = asdict(self)
        auto_mapping = {"base_model_class": d.pop("base_model_class")} if self.base_model_class else None
        common = {"peft_type": self.peft_type, "task_type": "CAUSAL_LM", "r": self.r, "lora_alpha": self.lora_alpha,
                  "lora_dropout": self.lora_dropout, "target_modules": self.target_modules,
                  "fan_in_fan_out": self.fan_in_fan_out, "base_model_name_or_path": self.base_model_name_or_path,
                  "auto_mapping": auto_mapping, "inference_mode": True}
        if self.peft_type == "LORA":
            return {**common, "bias": "none", "init_lora_weights": True, "modules_to_save": None,
                    "use_rslora": False, "use_dora": False, "layers_to_transform": None, "layers_pattern": None,
                    "rank_pattern": {}, "alpha_pattern": {}, "revision": None}
        return {**common, **{k: v for k, v in d.items() if k not in common}}

    @classmethod
    def from_dict(cls, d: dict, source: str = "the adapter config") -> "AdapterConfig":
        """The config a :meth:`to_dict` (or PEFT's LoRA ``adapter_config.json``) holds; ``ValueError`` naming
        ``source`` for one that is not an adapter config of ours or a PEFT LoRA config we can build."""
        if not isinstance(d, dict) or d.get("peft_type") not in PEFT_TYPES:
            got = d.get("peft_type") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{source}: peft_type must be one of {PEFT_TYPES}, got {got!r}")
        if d["peft_type"] == "LORA":  # a PEFT file may use options our LoRALinear does not have
            allowed = {"use_dora": (False, None), "use_rslora": (False, None), "bias": ("none", None),
                       "modules_to_save": (None, []), "rank_pattern": ({}, None), "alpha_pattern": ({}, None),
                       "layers_to_transform": (None,)}
            unsupported = {k: d[k] for k, ok in allowed.items() if k in d and d[k] not in ok}
            if unsupported:
                raise ValueError(f"{source}: PEFT options this package does not implement: {unsupported}")
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        auto_mapping = d.get("auto_mapping") or {}
        if "base_model_class" not in kwargs and isinstance(auto_mapping, dict):
            kwargs["base_model_class"] = auto_mapping.get("base_model_class")
        if isinstance(kwargs.get("target_modules"), str):  # PEFT allows a regular expression; we do not
            raise ValueError(f"{source}: target_modules is a regular expression ({kwargs['target_modules']!r}); "
                             "only a list of module names is supported")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None

    def save(self, folder) -> Path:
        """Write ``adapter_config.json`` into ``folder`` atomically; returns its path."""
        path = Path(folder) / CONFIG_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, folder) -> "AdapterConfig":
        """Read ``adapter_config.json`` from ``folder`` (or a path to the file itself); one ``ValueError`` naming the
        file for a missing, unreadable or broken one."""
        path = Path(folder)
        if path.is_dir():
            path = path / CONFIG_FILE
        if not path.is_file():
            raise ValueError(f"no adapter config at {str(path)!r} (an adapter folder holds {CONFIG_FILE} and "
                             f"{WEIGHTS_FILE})")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{str(path)!r} is not a readable JSON file: {err}") from None
        return cls.from_dict(d, source=str(path))


def default_target_modules(model) -> list[str]:
    """The feed-forward linears of ``model``'s architecture (``TARGET_MODULES[config.model_type]``); for a module
    without a Hugging Face config, LLaMA's names. ``ValueError`` for an architecture not in the table."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        return list(FFN_MODULES)
    if model_type not in TARGET_MODULES:
        raise ValueError(f"no default target_modules for model_type {model_type!r}; pass target_modules (the names "
                         f"of its feed-forward linears; known architectures: {sorted(TARGET_MODULES)})")
    return list(TARGET_MODULES[model_type])


def absolute_path(path) -> str:
    """``path`` as an absolute path, if it names something on this machine; else as given (a hub id)."""
    return os.path.abspath(path) if os.path.exists(path) else str(path)
