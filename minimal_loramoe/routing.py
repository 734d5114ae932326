"""Look inside the routers: how much gate weight each expert group gets, per sample type (Dou et al., 2024,
Fig. 5), and a switch that forces every token onto one group at inference.

Groups follow the localized balancing constraint: experts n < E/2 are the "knowledge" group, n >= E/2 the
"task" group.
"""
from contextlib import contextmanager

import torch

from .sft import encode_examples
from .loramoe import loramoe_layers as _moe_layers

GROUPS = ("knowledge", "task")


def _plain_batch(tokenizer, prompts, answers) -> dict:
    """The default batch of the gate statistics: ``prompt answer </s>``, right-padded (``sft.encode_examples``)."""
    return encode_examples(tokenizer, prompts, answers, add_eos=True)


@torch.no_grad()
def _gate_sums(model, tokenizer, dataset, batch_size, encode=_plain_batch):
    """Gate weight summed over the real tokens of each sample type: (names, sums (L, 2, E + I), counts (2,))."""
    layers = _moe_layers(model)
    was_training = model.training
    model.eval()
    first = next(iter(layers.values()))
    sums = torch.zeros(len(layers), 2, first.num_experts + first.num_identity_experts, dtype=torch.float64)
    counts = torch.zeros(2, dtype=torch.float64)
    device = next(model.parameters()).device
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        batch = encode(tokenizer, rows["prompt"], rows["answer"])
        mask = batch["attention_mask"].to(device)
        model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
        types = torch.tensor(rows["type"], device=device)
        for t in (0, 1):
            m = mask * (types == t).view(-1, 1)  # (B, T) real tokens of samples of type t
            counts[t] += m.sum().item()
            for i, layer in enumerate(layers.values()):
                sums[i, t] += (layer.last_gates * m.unsqueeze(-1)).sum(dim=(0, 1)).double().cpu()
    model.train(was_training)
    return list(layers), sums, counts


def mean_gates_by_type(model, tokenizer, dataset, batch_size: int = 256, encode=_plain_batch):
    """Mean gate weight of every expert in every LoRAMoE layer, per sample type, over all real tokens.

    Returns ``(names, W)`` with W a tensor (num_layers, 2, E + I): ``W[l, t, n]`` is the average weight expert n
    of layer l gives to the tokens of samples of type t (0 = task, 1 = knowledge); identity experts (if any) come
    last. Each row sums to 1. ``encode(tokenizer, prompts, answers)`` makes each batch (``input_ids`` and
    ``attention_mask``; only the tokens the mask marks count): by default ``prompt answer </s>``; a chat model
    passes its own format (e.g. ``minimal_loramoe.lab.smollm.prompt_mean_gates``: chat prompts only).
    """
    names, sums, counts = _gate_sums(model, tokenizer, dataset, batch_size, encode)
    return names, (sums / counts.clamp(min=1).view(1, 2, 1)).float()


def mean_gates(model, tokenizer, dataset, batch_size: int = 256) -> dict:
    """``{layer name: (E + I,) mean gate over every real token of dataset}`` -- the calibration gates that
    :func:`minimal_loramoe.slim.merge_loramoe` merges the experts with."""
    names, sums, counts = _gate_sums(model, tokenizer, dataset, batch_size)
    W = (sums.sum(1) / counts.sum().clamp(min=1)).float()  # (L, E + I)
    return dict(zip(names, W))


def group_weight(model, tokenizer, dataset, batch_size: int = 256) -> dict:
    """Share of gate weight on the knowledge group (experts n < E/2), averaged over layers, per sample type.

    Returns ``{"knowledge_samples": x, "task_samples": y}``. With no routing preference both are 0.5; the
    paper's story wants x > 0.5 > y; the official constraint's optimum gives the mirror image.
    With identity experts (SLIM) the shares are still of *all* gate weight, and the identity experts' share is
    added as ``"identity_knowledge_samples"`` and ``"identity_task_samples"``.
    """
    _, W = mean_gates_by_type(model, tokenizer, dataset, batch_size)
    layer = next(iter(_moe_layers(model).values()))
    E = layer.num_experts
    share = W[..., :E // 2].sum(-1).mean(0)  # (2,) over layers
    out = {"knowledge_samples": share[1].item(), "task_samples": share[0].item()}
    if layer.num_identity_experts:
        identity = W[..., E:].sum(-1).mean(0)  # (2,)
        out.update(identity_knowledge_samples=identity[1].item(), identity_task_samples=identity[0].item())
    return out


@contextmanager
def force_group(model, group: str):
    """Within the ``with`` block, every LoRAMoE router may only use one expert group.

    Every other expert's router logit (the other group's, and the identity experts' if any) is set to -inf before
    the softmax, so those experts get weight exactly 0. ``group`` is "knowledge" (experts n < E/2) or "task"
    (E/2 <= n < E).
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    handles = []
    for layer in _moe_layers(model).values():
        half, E = layer.num_experts // 2, layer.num_experts
        blocked = torch.ones(E + layer.num_identity_experts, dtype=torch.bool)  # (E + I,)
        blocked[slice(0, half) if group == "knowledge" else slice(half, E)] = False

        def hook(module, args, logits, blocked=blocked):
            return logits.masked_fill(blocked.to(logits.device), float("-inf"))

        handles.append(layer.router.register_forward_hook(hook))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
