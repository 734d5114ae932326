"""Look inside the routers: how much gate weight each expert group gets, per sample type (Dou et al., 2024,
Fig. 5), and a switch that forces every token onto one group at inference.

Groups follow the localized balancing constraint: experts n < E/2 are the "knowledge" group, n >= E/2 the
"task" group.
"""
from contextlib import contextmanager

import torch

from .evaluate import encode_examples
from .loramoe import LoRAMoELinear

GROUPS = ("knowledge", "task")


def _moe_layers(model):
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoRAMoELinear)}
    if not layers:
        raise ValueError("model has no LoRAMoELinear layers: call add_loramoe(model) first")
    return layers


@torch.no_grad()
def expert_weights(model, tokenizer, dataset, batch_size: int = 256):
    """Mean gate weight of every expert in every LoRAMoE layer, per sample type, over all real tokens.

    Returns ``(names, W)`` with W a tensor (num_layers, 2, E): ``W[l, t, n]`` is the average weight expert n of
    layer l gives to the tokens of samples of type t (0 = task, 1 = knowledge). Each row sums to 1.
    """
    layers = _moe_layers(model)
    was_training = model.training
    model.eval()
    E = next(iter(layers.values())).num_experts
    sums = torch.zeros(len(layers), 2, E, dtype=torch.float64)
    counts = torch.zeros(2, dtype=torch.float64)
    device = next(model.parameters()).device
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        batch = encode_examples(tokenizer, rows["prompt"], rows["answer"], add_eos=True)
        mask = batch["attention_mask"].to(device)
        model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
        types = torch.tensor(rows["type"], device=device)
        for t in (0, 1):
            m = mask * (types == t).view(-1, 1)  # (B, T) real tokens of samples of type t
            counts[t] += m.sum().item()
            for i, layer in enumerate(layers.values()):
                sums[i, t] += (layer.last_gates * m.unsqueeze(-1)).sum(dim=(0, 1)).double().cpu()
    model.train(was_training)
    return list(layers), (sums / counts.clamp(min=1).view(1, 2, 1)).float()


def group_weight(model, tokenizer, dataset, batch_size: int = 256) -> dict:
    """Share of gate weight on the knowledge group (experts n < E/2), averaged over layers, per sample type.

    Returns ``{"knowledge_samples": x, "task_samples": y}``. With no routing preference both are 0.5; the
    paper's story wants x > 0.5 > y; the official constraint's optimum gives the mirror image.
    """
    _, W = expert_weights(model, tokenizer, dataset, batch_size)
    half = W.shape[-1] // 2
    share = W[..., :half].sum(-1).mean(0)  # (2,) over layers
    return {"knowledge_samples": share[1].item(), "task_samples": share[0].item()}


@contextmanager
def force_group(model, group: str):
    """Within the ``with`` block, every LoRAMoE router may only use one expert group.

    The other group's router logits are set to -inf before the softmax, so its experts get weight exactly 0.
    ``group`` is "knowledge" (experts n < E/2) or "task" (n >= E/2).
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    handles = []
    for layer in _moe_layers(model).values():
        half = layer.num_experts // 2
        blocked = slice(half, None) if group == "knowledge" else slice(0, half)

        def hook(module, args, logits, blocked=blocked):
            logits = logits.clone()
            logits[..., blocked] = float("-inf")
            return logits

        handles.append(layer.router.register_forward_hook(hook))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
