"""A mixture of LoRA experts around one frozen linear layer -- the LoRAMoE layer (Dou et al., 2024, Sec. 3.2).

For each token x the router gives dense softmax weights over E experts, and each expert is a LoRA:

    g(x) = softmax(W_r x)                                   (in float32, like the official code)
    y    = W0 x + b + sum_i g_i(x) * (alpha / r) * B_i A_i dropout(x)

All E experts are computed at once. Stack the A_i into one (E*r, d_in) matrix, scale each expert's r-wide slice
of the hidden vector by that expert's gate, then apply all B_i as one (d_out, E*r) matrix:

    sum_i g_i B_i (A_i x) = [B_1 ... B_E] @ concat_i(g_i * A_i x)

which is exact (it is only a regrouping of the same sum) and costs about one LoRA of rank E*r, instead of E
separate small matmuls in a Python loop as in the official code.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .lora import check_adapter_args


class LoRAMoELinear(nn.Module):
    """E LoRA experts of rank r plus a router, around a frozen ``nn.Linear``.

    Parameters keep a per-expert layout so that every expert is easy to inspect:
    ``lora_A`` (E, r, d_in), ``lora_B`` (E, d_out, r), ``router`` = ``nn.Linear(d_in, E, bias=False)``.
    After each forward pass the float32 gate weights of that pass are kept in ``last_gates`` (..., E), for the
    localized balancing loss and for router plots.

    One difference from the official code: with dropout > 0 the official loop draws a fresh dropout mask per
    expert; here all experts share one mask (one dropout call). With dropout = 0 (evaluation) they agree exactly.
    """

    def __init__(self, base: nn.Linear, num_experts: int, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        check_adapter_args(base, rank, alpha, dropout, num_experts)
        self.base = base.requires_grad_(False)
        self.num_experts, self.rank, self.alpha, self.scaling = num_experts, rank, alpha, alpha / rank
        w = base.weight
        d_in, d_out = base.in_features, base.out_features
        self.lora_A = nn.Parameter(torch.empty(num_experts, rank, d_in, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, d_out, rank, dtype=w.dtype, device=w.device))
        for a in self.lora_A:  # each expert initialised like its own nn.Linear(d_in, r)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.router = nn.Linear(d_in, num_experts, bias=False, dtype=w.dtype, device=w.device)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.last_gates = None

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Dense per-token router weights, softmax in float32: (..., d_in) -> (..., E)."""
        return torch.softmax(self.router(x).float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., d_in)
        E, r = self.num_experts, self.rank
        y = self.base(x)  # (..., d_out) -- the frozen path
        gates = self.gates(x)  # (..., E)
        self.last_gates = gates
        h = F.linear(self.lora_dropout(x), self.lora_A.reshape(E * r, -1))  # (..., E*r): all A_i at once
        # Fold `scaling` into the gate (E numbers per token, not E*r), then scale each expert's r-slice.
        g = (gates * self.scaling).to(h.dtype)  # (..., E)
        h = (h.unflatten(-1, (E, r)) * g.unsqueeze(-1)).flatten(-2)  # (..., E, r) -> (..., E*r)
        B = self.lora_B.permute(1, 0, 2).reshape(-1, E * r)  # (d_out, E*r) = [B_1 ... B_E]
        return y + F.linear(h, B)  # (..., d_out)

    def forward_loop(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer written as the paper's sum, one expert at a time (the official code's shape).

        Slow; kept to check the fused :meth:`forward` against and for the benchmark.
        """
        y = self.base(x)
        gates = self.gates(x).to(x.dtype)
        xd = self.lora_dropout(x)
        for i in range(self.num_experts):
            delta_i = F.linear(F.linear(xd, self.lora_A[i]), self.lora_B[i]) * self.scaling  # (..., d_out)
            y = y + gates[..., i : i + 1] * delta_i
        return y

    def expert_delta_weight(self, i: int) -> torch.Tensor:
        """Expert i's dense update ``scaling * B_i @ A_i``, shape (d_out, d_in)."""
        return self.scaling * (self.lora_B[i] @ self.lora_A[i])

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}"
