"""The localized balancing constraint (LBC) of LoRAMoE (Dou et al., 2024, Sec. 3.3, Eq. 6-8).

Sample m has a type: 1 = world knowledge, 0 = other task. Experts n < E/2 are the "knowledge" group, n >= E/2 the
"task" group. Per LoRAMoE layer and batch:

    Q[n, m] = sum over the tokens t of sample m of g_n(x_t)          importance of expert n for sample m
    C[n, m] = 1 + delta  if expert n's group matches sample m's type, else 1 - delta
    Z       = Q * C (elementwise, flattened)
    L_lbc   = beta * Var(Z) / (Mean(Z)^2 + 1e-10)                     squared coefficient of variation, unbiased Var

Variants (``LBC_VARIANTS``): ``official`` is the above, as the official code computes it (its optimum is
Q_match / Q_other = (1 - delta) / (1 + delta)); ``corrected`` swaps C's two values and divides Q by each sample's
number of real tokens (optimum (1 + delta) / (1 - delta)); ``swapped`` and ``mean`` make one of those two changes
each. With identity experts (SLIM) the loss sees the LoRA experts' gates only, renormalised per token
(:func:`lora_gates`). Why these choices: the book's design notes (book/design_notes.md).
"""
import torch

from .loramoe import LoRAMoELinear, loramoe_layers

DELTA, BETA = 0.1, 0.1  # the defaults of delta and beta, here and in FinetuneConfig (lbc_delta, lbc_beta)

# variant -> (swap the coefficients, divide Q by each sample's real-token count); "swapped" and "mean" are the
# controls that make one of the two changes of "corrected" each
LBC_VARIANTS = {"official": (False, False), "swapped": (True, False), "mean": (False, True), "corrected": (True, True)}


def _check(gates, task_types, attention_mask):
    if gates.dim() != 3:
        raise ValueError(f"gates must have shape (batch, seq_len, num_experts), got {tuple(gates.shape)}")
    B, T, E = gates.shape
    if E % 2:
        raise ValueError(f"the localized balancing loss needs an even number of experts (two equal groups), got {E}")
    task_types = torch.as_tensor(task_types, device=gates.device)
    if task_types.shape != (B,):
        raise ValueError(f"task_types must have shape ({B},) (one type per sample), got {tuple(task_types.shape)}")
    if not torch.isin(task_types, torch.tensor([0, 1], device=gates.device)).all():
        raise ValueError(f"task_types must contain only 0 (other task) and 1 (world knowledge), got "
                         f"{sorted(set(task_types.tolist()))}")
    if attention_mask is not None and tuple(attention_mask.shape) != (B, T):
        raise ValueError(f"attention_mask must have shape ({B}, {T}), got {tuple(attention_mask.shape)}")
    return task_types


def importance(gates: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Q of the paper, transposed to (batch, E): the gate weight each expert gets, summed over a sample's tokens.

    With ``attention_mask`` (B, T) the padding tokens are left out (the official code sums over padding too).
    """
    gates = gates.float()  # (B, T, E)
    if attention_mask is not None:
        gates = gates * attention_mask.unsqueeze(-1).to(gates.dtype)
    return gates.sum(dim=1)  # (B, E)


def coefficients(task_types: torch.Tensor, num_experts: int, delta: float, corrected: bool = False) -> torch.Tensor:
    """C of the paper, transposed to (batch, E): 1 + delta where the expert's group matches the sample's type.

    Official: knowledge samples (type 1) match experts n < E/2, task samples (type 0) match experts n >= E/2.
    ``corrected=True`` swaps the two values (1 - delta on the matching group), which turns the optimum around.
    """
    half = num_experts // 2
    first_half = torch.arange(num_experts, device=task_types.device) < half  # (E,)
    match = (task_types.view(-1, 1) == 1) == first_half.view(1, -1)  # (B, E)
    on_match, off_match = (1 - delta, 1 + delta) if corrected else (1 + delta, 1 - delta)
    return torch.where(match, on_match, off_match).float()


def cv_squared(z: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation, as in the official code: unbiased Var(z) / (Mean(z)^2 + 1e-10)."""
    z = z.float().flatten()
    if z.numel() < 2:
        return z.new_zeros(())
    return z.var() / (z.mean() ** 2 + 1e-10)


def balance_matrix(gates, task_types, delta: float = DELTA, attention_mask=None, corrected: bool = False,
                   swap: bool | None = None, per_sample_mean: bool | None = None):
    """Z = Q * C of one LoRAMoE layer, shape (B, E): the matrix whose squared coefficient of variation is the loss.

    ``corrected=False`` is the official Z (Eq. 6-7); ``corrected=True`` swaps the coefficients and divides Q by each
    sample's number of real tokens (see :func:`corrected_localized_balance_loss`). ``swap`` and
    ``per_sample_mean``, when given, set each of those two changes on its own.
    """
    task_types = _check(gates, task_types, attention_mask)
    swap = corrected if swap is None else swap
    per_sample_mean = corrected if per_sample_mean is None else per_sample_mean
    Q = importance(gates, attention_mask)  # (B, E)
    if per_sample_mean:
        if attention_mask is not None:
            Q = Q / attention_mask.sum(dim=1, keepdim=True).clamp(min=1).to(Q.dtype)
        else:
            Q = Q / gates.shape[1]
    C = coefficients(task_types, gates.shape[-1], delta, corrected=swap)  # (B, E)
    return Q * C


def localized_balance_loss(gates, task_types, delta: float = DELTA, beta: float = BETA, attention_mask=None):
    """The localized balancing loss exactly as the official LoRAMoE code computes it (Eq. 6-8, CV^2).

    Args:
        gates: (B, T, E) router weights of one LoRAMoE layer (e.g. ``layer.last_gates``).
        task_types: (B,) 1 = world-knowledge sample, 0 = other downstream task.
        delta: how much the coefficients differ between matching and non-matching groups.
        beta: weight of the loss.
        attention_mask: optional (B, T); padded positions are left out of Q.
    """
    return beta * cv_squared(balance_matrix(gates, task_types, delta, attention_mask))


def corrected_localized_balance_loss(gates, task_types, delta: float = DELTA, beta: float = BETA, attention_mask=None):
    """The localized balancing loss with the optimum pointing the way the paper describes.

    Two changes to :func:`localized_balance_loss`: the coefficients are swapped (1 - delta on the matching group,
    so minimising the variance gives the matching group *more* weight: Q_match / Q_other = (1+delta)/(1-delta)),
    and Q is divided by each sample's number of real tokens (a per-sample mean instead of a sum).
    """
    return beta * cv_squared(balance_matrix(gates, task_types, delta, attention_mask, corrected=True))


def lora_gates(layer: LoRAMoELinear) -> torch.Tensor:
    """The layer's last gates restricted to its LoRA experts (..., E), renormalised to sum to 1 per token when
    it has identity experts (tokens that gave every weight to identity experts get all zeros)."""
    if layer.last_gates is None:
        raise ValueError("no router weights stored yet: run a forward pass before model_balance_loss")
    if not layer.num_identity_experts:
        return layer.last_gates  # (..., E), exactly what plain LoRAMoE has always used
    g = layer.last_gates[..., :layer.num_experts]  # (..., E)
    return g / g.sum(-1, keepdim=True).clamp(min=1e-12)


def _per_sample(gates: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*T, E) -> (B, T, E) for architectures that flatten the tokens before the feed-forward block (OPT)."""
    return gates.unflatten(0, (batch, -1)) if gates.dim() == 2 else gates


def model_balance_loss(model, task_types, attention_mask=None, delta: float = DELTA, beta: float = BETA,
                       variant: str = "official", gather=None) -> torch.Tensor:
    """Sum of the localized balancing loss over every LoRAMoE layer of ``model`` after a forward pass.

    The paper adds one such loss per LoRAMoE layer to the cross-entropy: ``loss = ce + model_balance_loss(...)``.
    ``variant``: a key of ``LBC_VARIANTS`` (``"official"``, ``"corrected"``, or one of the one-change controls).
    Identity experts, if any, are left out (module docstring).

    ``gather``, if given, maps the stacked per-layer Z matrices (L, B, E) of this process's batch to those of the
    whole global batch (L, B_global, E) -- for data-parallel training, where each process holds only a slice of
    the batch and the variance must be taken over all of it (see ``finetune.sft_loop``).
    """
    if variant not in LBC_VARIANTS:
        raise ValueError(f"variant must be one of {tuple(LBC_VARIANTS)}, got {variant!r}")
    swap, per_sample_mean = LBC_VARIANTS[variant]
    layers = list(loramoe_layers(model).values())
    batch = len(task_types)
    zs = [balance_matrix(_per_sample(lora_gates(layer), batch), task_types, delta, attention_mask, swap=swap,
                         per_sample_mean=per_sample_mean) for layer in layers]
    if gather is not None:
        zs = gather(torch.stack(zs))  # one collective for all layers, not one per layer
    total = None
    for z in zs:
        loss = beta * cv_squared(z)
        total = loss if total is None else total + loss
    return total
