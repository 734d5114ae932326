"""One LoRA around a frozen linear layer (Hu et al., 2021) -- the building block of every LoRAMoE expert.

    y = W0 x + b + (alpha / r) * B A dropout(x)          A: (r, d_in), B: (d_out, r)

``A`` starts Kaiming-uniform (like ``nn.Linear``) and ``B`` starts at zero, so before training the adapted layer
computes exactly what the frozen layer computes. Names follow Hugging Face PEFT (``lora_A``, ``lora_B``,
``scaling``, ``lora_dropout``, ``base``) so that what a reader learns here transfers to PEFT and back.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def check_adapter_args(base, rank, alpha, dropout, num_experts=1):
    """Raise a clear error for arguments no adapter can be built from (shared by every adapter layer)."""
    if not isinstance(base, nn.Linear):
        raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
    for name, value in (("num_experts", num_experts), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``scaling * B @ A``.

    Args:
        base: the linear layer to adapt; it is frozen (``requires_grad=False``) and kept as ``self.base``.
        rank: r, the inner width of the update.
        alpha: the update is scaled by ``alpha / rank`` so that changing r does not change its size at init.
        dropout: dropout on the adapter's input only (the frozen path sees the clean input).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        check_adapter_args(base, rank, alpha, dropout)
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # same init as nn.Linear and PEFT
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution ``scaling * B A dropout(x)``: (..., d_in) -> (..., d_out)."""
        return F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., d_in)
        y = self.base(x)  # (..., d_out)
        if self.merged:  # the update already lives inside base.weight
            return y
        return y + self.lora_delta(x)

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``scaling * B @ A``, shape (d_out, d_in) -- what merging adds to W0."""
        return self.scaling * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``base.weight``: inference then costs exactly the frozen layer's cost.

        LoRAMoE cannot do this: its expert weights ``g_i(x)`` depend on each token, so there is no single
        matrix to add.
        """
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (up to float rounding)."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


class GatedLoRALinear(LoRALinear):
    """A control for the book, not part of the paper: one LoRA times one learned per-token sigmoid gate.

        y = W0 x + b + sigmoid(w_g . x + b_g) * scaling * B A dropout(x)

    If this matches LoRAMoE, the benefit comes from *learned per-token gating* (the adapter can switch itself
    down on inputs it should not touch), not from having several experts.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__(base, rank, alpha, dropout)
        self.gate = nn.Linear(base.in_features, 1, device=base.weight.device, dtype=base.weight.dtype)
        nn.init.zeros_(self.gate.bias)  # gate starts near 0.5 for every token
        self.last_gates = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., d_in)
        gate = torch.sigmoid(self.gate(x).float())  # (..., 1), float32 like LoRAMoE's router
        self.last_gates = gate
        return self.base(x) + gate.to(x.dtype) * self.lora_delta(x)

    def merge(self) -> None:
        raise RuntimeError("GatedLoRALinear cannot be merged: its gate depends on each token")
