"""The table of methods: every fine-tuning method the book compares, one :class:`Method` entry each.

Everything that needs to know a method reads it here: ``FinetuneConfig`` (its adapter and settings),
``sft_loop`` (its balancing loss), the experiments (which methods are tuned, which learning rates the fronts
try). Adding a method is one entry in ``TABLE`` plus its test; the names below (``METHODS``, ``METHOD_SETTINGS``,
``LBC_OF_METHOD``, ...) are views of the table.
"""
from dataclasses import dataclass, field
from types import MappingProxyType

from .balance import LBC_VARIANTS as _VARIANTS
from .config import AdapterConfig

_A = AdapterConfig()
# What a setting left at None means for a method without it (``Method.settings``): the plain LoRAMoE layer of
# AdapterConfig's defaults, no L1 penalty, no DARE masks.
LAYER_SETTINGS = ("top_k", "num_identity_experts", "num_clusters", "yield_scale")
PLAIN_SETTINGS = MappingProxyType({**{k: getattr(_A, k) for k in LAYER_SETTINGS}, "l1_weight": 0.0,
                                   "mask_rate": 0.0})
LBC_VARIANTS = tuple(_VARIANTS)                                # balance.LBC_VARIANTS
ADAPTERS = (None, "LORA", "GATED_LORA", "LORAMOE")            # None: full fine-tuning; else AdapterConfig.peft_type


@dataclass(frozen=True)
class Method:
    """One method.

    ``adapter``: None (full fine-tuning: every weight trains) or the ``AdapterConfig.peft_type`` it adds.
    ``settings``: values of ``FinetuneConfig``'s SLIM fields (``PLAIN_SETTINGS`` keys) that differ from plain.
    ``lbc``: the localized balancing loss's variant (``LBC_VARIANTS``), None for none.
    ``frozen_router``: the router is zero and frozen, every gate exactly 1/E.
    ``lr_grid``: the learning rates the fronts try (``python -m minimal_loramoe.lab.fronts``).
    ``tuned``: ``python -m minimal_loramoe.lab.tune`` tunes its learning rate; ``lr_of``: it uses that method's tuned
    learning rate instead. A method with neither is compared on the fronts only.
    ``variant_of``: the method whose own settings this entry tunes (one point of SLIM's grid of L1 weight and
    DARE rate); it trains and is stored as a method of its own, and is drawn in that method's colour.
    """
    name: str
    adapter: str | None
    description: str
    settings: dict = field(default_factory=dict, hash=False)
    lbc: str | None = None
    frozen_router: bool = False
    lr_grid: tuple = ()
    tuned: bool = False
    lr_of: str | None = None
    variant_of: str | None = None

    def __post_init__(self):
        if self.adapter not in ADAPTERS:
            raise ValueError(f"{self.name}: adapter must be one of {ADAPTERS}, got {self.adapter!r}")
        unknown = set(self.settings) - set(PLAIN_SETTINGS)
        if unknown:
            raise ValueError(f"{self.name}: unknown settings {sorted(unknown)} (known: {list(PLAIN_SETTINGS)})")
        if (self.settings or self.lbc or self.frozen_router) and self.adapter != "LORAMOE":
            raise ValueError(f"{self.name}: settings, lbc and frozen_router need adapter='LORAMOE'")
        if self.lbc is not None and self.lbc not in LBC_VARIANTS:
            raise ValueError(f"{self.name}: lbc must be None or one of {LBC_VARIANTS}, got {self.lbc!r}")
        if self.tuned and self.lr_of is not None:
            raise ValueError(f"{self.name}: a method is tuned or shares another's learning rate, not both")
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "lr_grid", tuple(self.lr_grid))

    @property
    def fronts_only(self) -> bool:
        """No tuned learning rate of its own or shared: ``reproduce`` leaves it out by default."""
        return not self.tuned and self.lr_of is None


# SLIM's settings, not tuned: the paper's K = 2 and 2 identity experts; 8 clusters per layer; masking rate
# p = 0.5; l1_weight = 10 (book/design_notes.md: why these values).
_SLIM = dict(top_k=2, num_identity_experts=2, num_clusters=8, yield_scale=1.0, l1_weight=10.0, mask_rate=0.5)
# Bracketed grids: full fine-tuning moves every weight and needs ~10x smaller rates than the adapters.
_ADAPTER_GRID = (2e-4, 5e-4, 1e-3, 2e-3, 5e-3)
_LBC_GRID = (5e-4, 1e-3, 2e-3)

TABLE = {m.name: m for m in (
    Method("full_ft", None, "every weight of the model trains (what the paper shows forgetting with)",
           lr_grid=(1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4), tuned=True),
    Method("lora", "LORA", "one LoRA of rank E*r on each FFN linear (same parameter count as the experts)",
           lr_grid=_ADAPTER_GRID, tuned=True),
    Method("gated_lora", "GATED_LORA", "that LoRA times one learned per-token sigmoid gate (a control, not in the "
           "paper)", lr_grid=(5e-4, 1e-3, 2e-3, 5e-3), tuned=True),
    Method("loramoe_no_lbc", "LORAMOE", "LoRAMoE, cross-entropy only (what the official training script really runs)",
           lr_grid=_LBC_GRID, lr_of="loramoe"),
    Method("loramoe_official_lbc", "LORAMOE", "LoRAMoE + the localized balancing loss exactly as the official code "
           "computes it", lbc="official", lr_grid=_LBC_GRID, lr_of="loramoe"),
    Method("loramoe", "LORAMOE", "LoRAMoE + the corrected localized balancing loss (the variant this book "
           "recommends)", lbc="corrected", lr_grid=_ADAPTER_GRID, tuned=True),
    Method("loramoe_uniform_router", "LORAMOE", "LoRAMoE with its router frozen at zero, i.e. every gate exactly 1/E "
           "(a control)", frozen_router=True, lr_grid=(5e-4, 1e-3, 2e-3, 5e-3), tuned=True),
    Method("loramoe_swapped_lbc", "LORAMOE", "the corrected loss's first change alone: coefficients swapped, Q summed "
           "(a control)", lbc="swapped", lr_grid=_LBC_GRID),
    Method("loramoe_mean_lbc", "LORAMOE", "its second change alone: official coefficients, Q a per-sample mean "
           "(a control)", lbc="mean", lr_grid=_LBC_GRID),
    # SLIM (Han et al., 2025, arXiv 2410.07739) and its parts: the same E experts of rank r as loramoe; each
    # ablation removes one of SLIM's three parts
    Method("mixlora_top2", "LORAMOE", "sparse LoRA-MoE: top-2 of the E experts, no constraint (MixLoRA-like)",
           settings=dict(top_k=2), lr_grid=_ADAPTER_GRID),
    Method("slim", "LORAMOE", "E LoRA + 2 identity experts, top-2, weight yielding, L1 penalty + DARE masks at eval",
           settings=_SLIM, lr_grid=_ADAPTER_GRID),
    Method("slim_no_identity", "LORAMOE", "slim without identity experts (hence without weight yielding, which "
           "yields to them)", settings={**_SLIM, "num_identity_experts": 0, "num_clusters": 0},
           lr_grid=_ADAPTER_GRID),
    Method("slim_no_yield", "LORAMOE", "slim without weight yielding", settings={**_SLIM, "num_clusters": 0},
           lr_grid=_ADAPTER_GRID),
    Method("slim_no_merge", "LORAMOE", "slim without dynamic merging (no L1 penalty, no DARE masks)",
           settings={**_SLIM, "l1_weight": 0.0, "mask_rate": 0.0}, lr_grid=_ADAPTER_GRID),
)}


def slim_variant(l1_weight: float, mask_rate: float) -> str:
    """The table's name of SLIM at L1 weight ``l1_weight`` and DARE rate ``mask_rate`` (``slim_l1w1_p0.1``)."""
    return f"slim_l1w{l1_weight:g}_p{mask_rate:g}"


# SLIM's two own knobs, tuned on the cipher mix (chapter 9): the weight of its L1 penalty (training) and DARE's
# masking rate p (evaluation only: variants that differ only in p train the same model). slim and slim_no_merge
# are two corners of this grid.
SLIM_L1_WEIGHTS = (0.0, 0.1, 1.0, 10.0)
SLIM_MASK_RATES = (0.0, 0.05, 0.1, 0.25, 0.5)
_CORNERS = {(_SLIM["l1_weight"], _SLIM["mask_rate"]): "slim", (0.0, 0.0): "slim_no_merge"}
for _l1 in SLIM_L1_WEIGHTS:
    for _p in SLIM_MASK_RATES:
        if (_l1, _p) not in _CORNERS:
            _name = slim_variant(_l1, _p)
            TABLE[_name] = Method(_name, "LORAMOE", f"slim at L1 weight {_l1:g} and DARE rate {_p:g}",
                                  settings={**_SLIM, "l1_weight": _l1, "mask_rate": _p}, lr_grid=_ADAPTER_GRID,
                                  variant_of="slim")

# ------------------------------------------------------------------------------------------ views of the table
METHODS = tuple(TABLE)
METHOD_SETTINGS = {m.name: dict(m.settings) for m in TABLE.values() if m.settings and m.variant_of is None}
SLIM_METHODS = tuple(METHOD_SETTINGS)
# SLIM's grid of L1 weight x DARE rate: {(l1_weight, mask_rate): method name}, its two corners included
SLIM_GRID = {(m.settings["l1_weight"], m.settings["mask_rate"]): m.name for m in TABLE.values()
             if m.name == "slim" or m.variant_of == "slim" or m.name == "slim_no_merge"}
LBC_OF_METHOD = {m.name: m.lbc for m in TABLE.values() if m.lbc is not None}
PEFT_TYPE_OF_METHOD = {m.name: m.adapter for m in TABLE.values() if m.adapter not in (None, "LORAMOE")}
TUNED_METHODS = tuple(m.name for m in TABLE.values() if m.tuned)
SHARES_LR_OF = {m.name: m.lr_of for m in TABLE.values() if m.lr_of is not None}
FRONTS_ONLY = tuple(m.name for m in TABLE.values() if m.fronts_only)
FRONTS_LR_GRIDS = {m.name: m.lr_grid for m in TABLE.values()}
MIXTURE_METHODS = tuple(m.name for m in TABLE.values() if m.adapter == "LORAMOE")  # the ones with routers


def get_method(name: str) -> Method:
    """The table's entry for ``name``; ``ValueError`` naming the known methods otherwise."""
    if name not in TABLE:
        raise ValueError(f"method must be one of {METHODS}, got {name!r}")
    return TABLE[name]


def method_of_adapter(peft_type: str | None) -> str:
    """The plain method of an adapter kind (no settings, no balancing loss, a trainable router): the method a model
    prepared with ``add_lora`` / ``add_loramoe`` ... (or none, ``peft_type=None``) trains as."""
    for m in TABLE.values():
        if m.adapter == peft_type and not m.settings and m.lbc is None and not m.frozen_router:
            return m.name
    raise ValueError(f"no plain method for adapter {peft_type!r}; adapters: {ADAPTERS}")


def check_table() -> None:
    """Raise ``ValueError`` if the table is inconsistent (a method sharing an unknown or untuned learning rate)."""
    for m in TABLE.values():
        if m.lr_of is not None and not (m.lr_of in TABLE and TABLE[m.lr_of].tuned):
            raise ValueError(f"{m.name}: lr_of={m.lr_of!r} is not a tuned method")
        if m.variant_of is not None and (m.variant_of not in TABLE or TABLE[m.variant_of].variant_of is not None):
            raise ValueError(f"{m.name}: variant_of={m.variant_of!r} is not a method of its own")


check_table()
