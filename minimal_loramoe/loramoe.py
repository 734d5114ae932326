"""A mixture of LoRA experts around one frozen linear layer -- the LoRAMoE layer (Dou et al., 2024, Sec. 3.2).

For each token x the router gives dense softmax weights over E experts, and each expert is a LoRA:

    g(x) = softmax(W_r x)                                   (in float32, like the official code)
    y    = W0 x + b + sum_i g_i(x) * (alpha / r) * B_i A_i dropout(x)

computed for all E experts at once as ``[B_1 ... B_E] @ concat_i(g_i * A_i x)`` (exact; book/design_notes.md).

Three optional pieces come from SLIM (Han et al., 2025, arXiv 2410.07739, Sec. 3.1-3.3); their defaults leave the
LoRAMoE layer above unchanged, bit for bit:

* ``top_k``: keep the K largest softmax weights per token, renormalised to sum to 1 (MixLoRA, SLIM).
* ``num_identity_experts``: experts with no weights whose contribution is exactly zero -- a token routed there
  keeps the frozen layer's output. They have router rows and take part in the softmax and in top-K.
* ``num_clusters``: weight yielding with sliding clustering (:class:`~minimal_loramoe.clusters.
  SlidingClusters`): inputs far from every cluster of the fine-tuning data get a bonus on the identity experts' logits.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .clusters import SlidingClusters
from .config import AdapterConfig, check_slim_args
from .lora import FrozenBase, check_adapter_args, linear_features

_D = AdapterConfig()  # the defaults of the optional settings come from there


class LoRAMoELinear(FrozenBase, nn.Module):
    """E LoRA experts of rank r plus a router, around a frozen ``nn.Linear`` (or ``Conv1D``), kept as
    ``base_layer``.

    Parameters keep a per-expert layout so that every expert is easy to inspect:
    ``lora_A`` (E, r, d_in), ``lora_B`` (E, d_out, r), ``router`` = ``nn.Linear(d_in, E + I, bias=False)`` with
    I = ``num_identity_experts`` (0 by default). After each forward pass the float32 gate weights of that pass are
    kept in ``last_gates`` (..., E + I): LoRA experts first, identity experts last; for the localized balancing
    loss and for router plots.

    With dropout > 0 all experts share one dropout mask (the official code draws one per expert).

    SLIM options (module docstring): ``top_k`` (None = dense), ``num_identity_experts``, and weight yielding with
    ``num_clusters`` clusters (0 = off), whose bonus on the identity logits is
    ``yield_scale * relu(d - d_ref)`` -- see :meth:`gates`.
    """

    def __init__(self, base_layer: nn.Module, num_experts: int, rank: int, alpha: float,
                 dropout: float = _D.lora_dropout, top_k: int | None = _D.top_k,
                 num_identity_experts: int = _D.num_identity_experts, num_clusters: int = _D.num_clusters,
                 yield_scale: float = _D.yield_scale):
        super().__init__()
        check_adapter_args(base_layer, rank, alpha, dropout, num_experts)
        check_slim_args(num_experts, top_k, num_identity_experts, num_clusters, yield_scale)
        self.base_layer = base_layer.requires_grad_(False)
        self.num_experts, self.rank, self.alpha, self.scaling = num_experts, rank, alpha, alpha / rank
        self.top_k, self.num_identity_experts, self.yield_scale = top_k, num_identity_experts, yield_scale
        w = base_layer.weight
        d_in, d_out = linear_features(base_layer)
        self.lora_A = nn.Parameter(torch.empty(num_experts, rank, d_in, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, d_out, rank, dtype=w.dtype, device=w.device))
        for a in self.lora_A:  # each expert initialised like its own nn.Linear(d_in, r)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.router = nn.Linear(d_in, num_experts + num_identity_experts, bias=False, dtype=w.dtype,
                                device=w.device)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # buffers (saved with the adapter); None = no weight yielding, and then nothing is registered
        self.clusters = SlidingClusters(d_in, num_clusters, device=w.device) if num_clusters else None
        self.last_gates = None

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token router weights, softmax in float32: (..., d_in) -> (..., E + I).

        Dense by default. With weight yielding, every identity expert's logit gets the same bonus
        ``yield_scale * relu(d - d_ref)`` before the softmax, where d = max_c |x - c| / sigma - 1 is the distance
        to the nearest cluster of the fine-tuning inputs and d_ref the mean d of the training tokens (both from
        :class:`~minimal_loramoe.clusters.SlidingClusters`; in training the batch first updates the clusters).
        Why measured from d_ref: book/design_notes.md. With ``top_k``, only the K largest weights per token are
        kept and renormalised to sum to 1.
        """
        logits = self.router(x).float()  # (..., E + I)
        if self.clusters is not None:
            if self.training:
                self.clusters.update(x)  # the batch moves the clusters first, then is routed with them
            bonus = self.yield_scale * (self.clusters.distance(x) - self.clusters.d_ref).clamp(min=0)  # (...,)
            E = self.num_experts
            logits = torch.cat([logits[..., :E], logits[..., E:] + bonus.unsqueeze(-1)], dim=-1)
        gates = torch.softmax(logits, dim=-1)  # (..., E + I)
        if self.top_k is not None:
            top, idx = gates.topk(self.top_k, dim=-1)  # (..., K)
            gates = torch.zeros_like(gates).scatter(-1, idx, top / top.sum(-1, keepdim=True))
        return gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., d_in)
        E, r = self.num_experts, self.rank
        y = self.base_layer(x)  # (..., d_out) -- the frozen path
        gates = self.gates(x)  # (..., E + I)
        self.last_gates = gates
        h = F.linear(self.lora_dropout(x), self.lora_A.reshape(E * r, -1))  # (..., E*r): all A_i at once
        # Fold `scaling` into the gate (E numbers per token, not E*r), then scale each expert's r-slice. The
        # identity experts (gates[..., E:]) add nothing; with top-K the zeroed gates still ride along in the same
        # matmuls (a sparse kernel would skip the unchosen experts' rows of A and columns of B).
        g = (gates[..., :E] * self.scaling).to(h.dtype)  # (..., E)
        h = (h.unflatten(-1, (E, r)) * g.unsqueeze(-1)).flatten(-2)  # (..., E, r) -> (..., E*r)
        B = self.lora_B.permute(1, 0, 2).reshape(-1, E * r)  # (d_out, E*r) = [B_1 ... B_E]
        return y + F.linear(h, B)  # (..., d_out)

    def forward_loop(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer written as the paper's sum, one expert at a time (the official code's shape).

        Slow; kept to check the fused :meth:`forward` against and for the benchmark.
        """
        y = self.base_layer(x)
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
        s = f"num_experts={self.num_experts}, rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}"
        if self.top_k is not None or self.num_identity_experts:
            s += f", top_k={self.top_k}, num_identity_experts={self.num_identity_experts}"
        if self.clusters is not None:
            s += f", yield_scale={self.yield_scale:g}"
        return s


def loramoe_layers(model: nn.Module) -> dict:
    """``{name: layer}`` of every :class:`LoRAMoELinear` in ``model``, in module order; ``ValueError`` if none."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoRAMoELinear)}
    if not layers:
        raise ValueError("model has no LoRAMoELinear layers: call add_loramoe(model) first")
    return layers
