"""One LoRA around a frozen linear layer (Hu et al., 2021) -- the building block of every LoRAMoE expert.

    y = W0 x + b + (alpha / r) * B A dropout(x)          A: (r, d_in), B: (d_out, r)

``A`` starts Kaiming-uniform (like ``nn.Linear``) and ``B`` starts at zero, so before training the adapted layer
computes exactly what the frozen layer computes. Names follow Hugging Face PEFT (``lora_A``, ``lora_B``,
``scaling``, ``lora_dropout``, ``base_layer``) so that what a reader learns here transfers to PEFT and back.

The frozen layer is an ``nn.Linear`` or a transformers ``Conv1D`` (GPT-2's linear: ``x @ W + b`` with ``W`` stored
(d_in, d_out), PEFT's ``fan_in_fan_out``); the adapter's A and B have the same shapes for both.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import AdapterConfig

_DROPOUT = AdapterConfig.lora_dropout  # the default lives in AdapterConfig

LINEAR_TYPES = (nn.Linear, Conv1D)  # what an adapter can wrap


def linear_features(layer: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an ``nn.Linear`` or a transformers ``Conv1D`` (weight stored (d_in, d_out))."""
    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    return layer.in_features, layer.out_features


def check_adapter_args(base_layer, rank, alpha, dropout, num_experts=1):
    """Raise a clear error for arguments no adapter can be built from (shared by every adapter layer)."""
    if not isinstance(base_layer, LINEAR_TYPES):
        raise TypeError(f"base_layer must be an nn.Linear or a transformers Conv1D, got {type(base_layer).__name__}")
    for name, value in (("num_experts", num_experts), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a number > 0 and finite, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")


class FrozenBase:
    """What every adapter layer shares: the frozen layer as ``base_layer`` (PEFT's name; ``base`` is kept as an
    alias), its shape, and whether its weight is stored transposed (``fan_in_fan_out``, Conv1D)."""

    @property
    def base(self) -> nn.Module:
        return self.base_layer

    @property
    def in_features(self) -> int:
        return linear_features(self.base_layer)[0]

    @property
    def out_features(self) -> int:
        return linear_features(self.base_layer)[1]

    @property
    def fan_in_fan_out(self) -> bool:
        return isinstance(self.base_layer, Conv1D)

    def to_base_layout(self, delta: torch.Tensor) -> torch.Tensor:
        """A (d_out, d_in) update in the layout of ``base_layer.weight`` (transposed for Conv1D)."""
        return delta.T if self.fan_in_fan_out else delta


class LoRALinear(FrozenBase, nn.Module):
    """A frozen ``nn.Linear`` (or ``Conv1D``) plus a trainable low-rank update ``scaling * B @ A``.

    Args:
        base_layer: the linear layer to adapt; it is frozen (``requires_grad=False``) and kept as
            ``self.base_layer``.
        rank: r, the inner width of the update.
        alpha: the update is scaled by ``alpha / rank`` so that changing r does not change its size at init.
        dropout: dropout on the adapter's input only (the frozen path sees the clean input).
    """

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float, dropout: float = _DROPOUT):
        super().__init__()
        check_adapter_args(base_layer, rank, alpha, dropout)
        self.base_layer = base_layer.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        w = base_layer.weight
        d_in, d_out = linear_features(base_layer)
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # same init as nn.Linear and PEFT
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution ``scaling * B A dropout(x)``: (..., d_in) -> (..., d_out)."""
        return F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., d_in)
        y = self.base_layer(x)  # (..., d_out)
        if self.merged:  # the update already lives inside base_layer.weight
            return y
        return y + self.lora_delta(x)

    def get_delta_weight(self) -> torch.Tensor:
        """The dense update ``scaling * B @ A``, shape (d_out, d_in) -- what merging adds to W0."""
        return self.scaling * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base_layer.weight``: inference then costs exactly the frozen layer's cost.

        LoRAMoE cannot do this: its expert weights ``g_i(x)`` depend on each token, so there is no single
        matrix to add.
        """
        if not self.merged:
            self.base_layer.weight += self.to_base_layout(self.get_delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (up to float rounding)."""
        if self.merged:
            self.base_layer.weight -= self.to_base_layout(self.get_delta_weight())
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


class GatedLoRALinear(LoRALinear):
    """A control for the book, not part of the paper: one LoRA times one learned per-token sigmoid gate.

        y = W0 x + b + sigmoid(w_g . x + b_g) * scaling * B A dropout(x)

    If this matches LoRAMoE, the benefit comes from *learned per-token gating* (the adapter can switch itself
    down on inputs it should not touch), not from having several experts.
    """

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float, dropout: float = _DROPOUT):
        super().__init__(base_layer, rank, alpha, dropout)
        w = base_layer.weight
        self.gate = nn.Linear(self.in_features, 1, device=w.device, dtype=w.dtype)
        nn.init.zeros_(self.gate.bias)  # gate starts near 0.5 for every token
        self.last_gates = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., d_in)
        gate = torch.sigmoid(self.gate(x).float())  # (..., 1), float32 like LoRAMoE's router
        self.last_gates = gate
        return self.base_layer(x) + gate.to(x.dtype) * self.lora_delta(x)

    def merge(self) -> None:
        raise RuntimeError("GatedLoRALinear cannot be merged: its gate depends on each token")
