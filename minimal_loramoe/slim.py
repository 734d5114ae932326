"""SLIM's additions to a mixture of LoRA experts (Han et al., 2025, *SLIM: Let LLM Learn More and Forget Less with
Soft LoRA and Identity Mixture*, arXiv 2410.07739). No code was published; where the paper is silent the choice
made here is written in the docstring.

* weight yielding with sliding clustering (Sec. 3.3) is part of the layer: :class:`~minimal_loramoe.clusters.
  SlidingClusters` and :class:`~minimal_loramoe.LoRAMoELinear` (top-K routing, identity experts, the yield rule).
* :func:`dare_masks` / :func:`dare_masked` -- dynamic merging, fast version (Sec. 3.4): DARE (Yu et al., 2024)
  drops a fraction p of a task vector's entries and rescales the rest by 1/(1-p); here whole rows of each B_i and
  columns of each A_i are dropped, so the low-rank product never has to be formed.
* :func:`l1_penalty` -- the L1 penalty on the adapters that keeps them sparse, so that masking hurts less.
* :func:`merged_weight` / :func:`merge_loramoe` -- fold the experts into one plain linear per layer.
"""
import copy
import math
from contextlib import contextmanager

import torch

from .inject import CONFIG_ATTR
from .loramoe import loramoe_layers as _moe_layers


def _check_p(p):
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"p (the masking rate) must be a number in [0, 1), got {p!r}")


def dare_masks(layer, p: float, generator: torch.Generator | None = None):
    """Random keep-masks for the rows of every B_i and the columns of every A_i of a LoRAMoE layer.

    Returns ``(keep_out, keep_in)``, float 0/1 tensors of shape (E, d_out) and (E, d_in). Each row and each column
    is kept with probability sqrt(1 - p), independently, so each entry of B_i A_i survives with probability
    1 - p, the masking rate of DARE; rescaling the kept ones by 1/(1-p) keeps every entry's expectation.
    """
    _check_p(p)
    q = math.sqrt(1.0 - p)
    E, d_out, d_in = layer.num_experts, layer.out_features, layer.in_features
    keep_out = (torch.rand(E, d_out, generator=generator) < q).float()  # (E, d_out)
    keep_in = (torch.rand(E, d_in, generator=generator) < q).float()  # (E, d_in)
    return keep_out.to(layer.lora_B.device), keep_in.to(layer.lora_A.device)


def _masked_factors(layer, p, generator):
    """(A, B) of the layer with DARE masks applied and the 1/(1-p) rescale folded into B."""
    keep_out, keep_in = dare_masks(layer, p, generator)
    A = layer.lora_A * keep_in.unsqueeze(1).to(layer.lora_A.dtype)  # (E, r, d_in): columns of A_i
    B = layer.lora_B * (keep_out / (1.0 - p)).unsqueeze(-1).to(layer.lora_B.dtype)  # (E, d_out, r): rows of B_i
    return A, B


@contextmanager
def dare_masked(model, p: float, seed: int = 0):
    """Within the ``with`` block every expert of every LoRAMoE layer is DARE-masked (rows of B_i, columns of A_i,
    kept ones rescaled by 1/(1-p)); the weights are restored exactly on exit.

    Our reading of SLIM's dynamic merging: the masks are drawn once (from ``seed``, so an evaluation is
    repeatable) and applied after training, as DARE does; the router still mixes the masked experts token by
    token, so each token sees its own merge of the base with the masked task vectors.
    """
    _check_p(p)
    layers = _moe_layers(model).values()
    g = torch.Generator().manual_seed(seed)
    saved = [(m.lora_A.detach().clone(), m.lora_B.detach().clone()) for m in layers]
    with torch.no_grad():
        for m in layers:
            A, B = _masked_factors(m, p, g)
            m.lora_A.copy_(A)
            m.lora_B.copy_(B)
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, (A, B) in zip(layers, saved):
                m.lora_A.copy_(A)
                m.lora_B.copy_(B)


def l1_penalty(model) -> torch.Tensor:
    """SLIM's sparsity penalty: for each LoRAMoE layer, the L1 norm of its adapters normalised by rank and layer
    width, summed over layers (add ``weight * l1_penalty(model)`` to the loss).

    Per layer: (sum_i ||A_i||_1 + ||B_i||_1) / (E * r * (d_in + d_out)), i.e. the mean |entry| of ``lora_A`` and
    ``lora_B`` together, so the penalty does not grow with the number of experts, the rank or the layer's size.
    """
    total = None
    for m in _moe_layers(model).values():
        size = m.num_experts * m.rank * (m.in_features + m.out_features)
        loss = (m.lora_A.abs().sum() + m.lora_B.abs().sum()) / size
        total = loss if total is None else total + loss
    return total


@torch.no_grad()
def merged_weight(layer, gate: torch.Tensor, p: float = 0.0, generator: torch.Generator | None = None):
    """One plain weight for a LoRAMoE layer: ``W0 + sum_i gate_i * scaling * B_i A_i`` (d_out, d_in), in the layout of
    ``base_layer.weight`` (transposed, (d_in, d_out), for a Conv1D).

    ``gate`` (E + I,) gives one weight per expert (identity experts, last, add nothing). A router-dependent
    mixture has no exact merge; with ``gate`` = the layer's average gate over a calibration set
    (:func:`minimal_loramoe.routing.mean_gates`), the merged layer applies to every token the update the mixture
    applies on average -- exact when the gate is the same for every token. ``p > 0`` DARE-masks the experts first.
    """
    E = layer.num_experts
    gate = torch.as_tensor(gate, dtype=torch.float32)
    if gate.shape != (E + layer.num_identity_experts,):
        raise ValueError(f"gate must have shape ({E + layer.num_identity_experts},) (one weight per expert), "
                         f"got {tuple(gate.shape)}")
    A, B = _masked_factors(layer, p, generator) if p > 0 else (layer.lora_A, layer.lora_B)
    g = (gate[:E] * layer.scaling).to(device=A.device, dtype=A.dtype)  # (E,)
    return layer.base_layer.weight + layer.to_base_layout(torch.einsum("e,eor,eri->oi", g, B, A))  # (d_out, d_in)


def merge_loramoe(model, gates: dict, p: float = 0.0, seed: int = 0):
    """A copy of ``model`` with every LoRAMoE layer replaced by a plain ``nn.Linear`` (or ``Conv1D``) holding
    :func:`merged_weight` -- the "merged" model, to compare with the "mixture" (``model`` itself).

    ``gates`` maps each LoRAMoE layer's name to its (E + I,) gate (e.g. from
    :func:`minimal_loramoe.routing.mean_gates`). Inference then costs exactly the base model's cost.
    """
    _check_p(p)
    layers = _moe_layers(model)
    if set(gates) != set(layers):
        raise ValueError(f"gates must have one entry per LoRAMoE layer {sorted(layers)[:3]}..., "
                         f"got {sorted(gates)[:3]}...")
    merged = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    for name, layer in layers.items():
        linear = copy.deepcopy(layer.base_layer)
        linear.weight.data = merged_weight(layer, gates[name], p, g)
        parent, _, child = name.rpartition(".")
        setattr(merged.get_submodule(parent), child, linear)
    if hasattr(merged, CONFIG_ATTR):
        delattr(merged, CONFIG_ATTR)  # it has no adapters any more
    return merged
