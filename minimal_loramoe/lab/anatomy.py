"""The book's looks inside a LoRAMoE (chapters 5 and 6): the statistics tables and figure layouts that are not
the lesson itself. The method (layer, router, constraint) is written out in the chapters; this module only
measures and draws.

* :func:`tv`, :func:`gate_spread`: how different the gates of two tokens, and of two kinds of prompt, are;
* :func:`layer_inputs`, :func:`update_stats`: what softmax gates do to the size of a LoRAMoE layer's update;
* :func:`plot_token_gates`, :func:`plot_training_terms`, :func:`plot_router_groups`, :func:`group_share_by_task`,
  :func:`plot_share_by_task`: the chapters' router figures.
"""
import numpy as np
import torch

from ..inject import adapter_layers
from .report import color_of
from ..routing import mean_gates_by_type


def short_name(name: str) -> str:
    """``"model.layers.0.mlp.up_proj"`` -> ``"L0 up_proj"``."""
    return name.replace("model.layers.", "L").replace(".mlp.", " ")


def tv(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Total-variation distance between distributions over the last dimension: 0 = equal, 1 = disjoint."""
    return (p - q).abs().sum(-1) / 2


def gate_spread(gates: torch.Tensor, is_knowledge: torch.Tensor, n_pairs: int = 20000, seed: int = 0) -> dict:
    """gates (tokens, E), is_knowledge (tokens,) bool -> ``{"tokens": mean tv of n_pairs random token pairs,
    "types": tv between the mean gates of knowledge tokens and of the other tokens}``."""
    pairs = torch.randint(len(gates), (2, n_pairs), generator=torch.Generator().manual_seed(seed))
    return {"tokens": tv(gates[pairs[0]], gates[pairs[1]]).mean().item(),
            "types": tv(gates[is_knowledge].mean(0), gates[~is_knowledge].mean(0)).item()}


@torch.no_grad()
def layer_inputs(model, input_ids, attention_mask) -> dict:
    """``{name: input (B, T, d_in)}`` of every adapter layer of ``model`` for one batch (caught by forward hooks)."""
    inputs = {}
    hooks = [layer.register_forward_hook(lambda module, args, out, name=name: inputs.__setitem__(name, args[0]))
             for name, layer in adapter_layers(model).items()]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


@torch.no_grad()
def update_stats(layer, xs: torch.Tensor, is_knowledge: torch.Tensor) -> dict:
    """What a LoRAMoE layer adds, u = sum_i g_i Delta_i, on tokens xs (N, d_in); is_knowledge (N,) bool (CPU).

    Means over tokens: ``knowledge``/``tasks``: |u| / |W0 x| on the two kinds of token; ``quiet``: quietest over
    loudest expert update; ``amplification``: E max_i g_i; ``vs_uniform``: |u| / |mean_i Delta_i|. And
    ``over_loudest``: the largest |u| / max_i |Delta_i| over tokens (never above 1: the gates average).
    """
    gs = layer.gates(xs)  # (N, E)
    deltas = layer.scaling * torch.einsum("eor,erd,nd->neo", layer.lora_B, layer.lora_A, xs)  # (N, E, d_out)
    u = (gs.unsqueeze(-1) * deltas).sum(1)  # (N, d_out)
    torch.testing.assert_close(layer(xs), layer.base(xs) + u)  # it is the layer's own update
    loud = deltas.norm(dim=-1)  # (N, E)
    size = (u.norm(dim=-1) / layer.base(xs).norm(dim=-1)).cpu()
    return {"knowledge": size[is_knowledge].mean().item(), "tasks": size[~is_knowledge].mean().item(),
            "quiet": (loud.min(-1).values / loud.max(-1).values).mean().item(),
            "amplification": (layer.num_experts * gs.max(-1).values).mean().item(),
            "vs_uniform": (u.norm(dim=-1) / deltas.mean(1).norm(dim=-1)).mean().item(),
            "over_loudest": (u.norm(dim=-1) / loud.max(-1).values).max().item()}


def plot_token_gates(before: dict, after: dict, title: str):
    """Heatmaps of per-token gates: rows = the prompts of ``before``/``after`` ({name: (tokens, gates (T, E))}),
    columns = before and after training. Returns the figure."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(before), 2, figsize=(10, 4 * len(before)), facecolor="white", squeeze=False)
    vmax = max(g.max().item() for d in (before, after) for _, g in d.values())
    for row, name in enumerate(before):
        for col, (when, gates_of) in enumerate([("before training", before), ("after training", after)]):
            tokens, gates = gates_of[name]
            ax = axes[row, col]
            im = ax.imshow(gates.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
            ax.set_xticks(range(gates.shape[1]), [f"e{i}" for i in range(gates.shape[1])])
            ax.set_title(f"{name}, {when}", fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.6, label="gate weight")
    fig.suptitle(title)
    return fig


def running_mean(values, width: int = 10) -> np.ndarray:
    """Mean over a sliding window of ``width`` values (``len(values) - width + 1`` of them)."""
    return np.convolve(values, np.ones(width) / width, mode="valid")


def plot_training_terms(histories: dict, labels: dict, reference: float, width: int = 10):
    """Cross-entropy (left) and summed constraint (right) per step, running mean over ``width`` steps, log
    scale, for ``histories`` ({method: finetune history}); a dashed line at ``reference``. Returns the figure."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), facecolor="white", layout="constrained")
    for method, label in labels.items():
        for ax, key in zip(axes, ("loss", "lbc")):
            if histories[method][key]:
                curve = running_mean(histories[method][key], width)
                ax.plot(np.arange(len(curve)) + width, curve, label=label, color=color_of(method))
    axes[1].axhline(reference, color="grey", ls="--", lw=1, label=f"the most routing can take off: {reference:.4f}")
    axes[0].set(ylabel="cross-entropy per answer token", title="language-model loss")
    axes[1].set(ylabel=r"$\sum_\ell L^{(\ell)}_{lbc}$", title=r"constraint, summed over the layers")
    for ax in axes:
        ax.set(yscale="log", xlabel="training step")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def plot_router_groups(W: dict, labels: dict, layer_names: list):
    """Per run (columns; W = {method: (layers, 2 types, E)}), top: the knowledge group's share (experts n < E/2)
    per layer for knowledge and task samples; bottom: every expert's weight on knowledge minus task samples."""
    import matplotlib.pyplot as plt
    half = next(iter(W.values())).shape[-1] // 2
    short = [short_name(n) for n in layer_names]
    diff = {m: (W[m][:, 1] - W[m][:, 0]).numpy() for m in labels}  # (layers, E)
    vmax = max(np.abs(d).max() for d in diff.values())
    fig, axes = plt.subplots(2, len(labels), figsize=(13, 8), facecolor="white", layout="constrained", squeeze=False)
    for j, m in enumerate(labels):
        g = np.ascontiguousarray(W[m][..., :half].sum(-1).numpy()[:, ::-1])  # (layers, [knowledge, task samples])
        ax = axes[0, j]
        im0 = ax.imshow(g, cmap="viridis", vmin=0.3, vmax=0.7, aspect="auto")
        for (i, k), v in np.ndenumerate(g):
            ax.text(k, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.5 else "black", fontsize=8)
        ax.set(xticks=[0, 1], xticklabels=["knowledge\nsamples", "task\nsamples"], yticks=range(len(short)),
               yticklabels=short if j == 0 else [], title=f"{labels[m]}\nknowledge-group share")
        ax = axes[1, j]
        im1 = ax.imshow(diff[m], cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.axvline(half - 0.5, color="black", ls="--", lw=1)
        ax.set(xticks=range(2 * half), xlabel=f"expert (0-{half - 1}: knowledge group, {half}-{2 * half - 1}: task)",
               yticks=range(len(short)), yticklabels=short if j == 0 else [],
               title=f"{labels[m]}\nknowledge minus task samples")
    fig.colorbar(im0, ax=axes[0].tolist(), shrink=0.8)
    fig.colorbar(im1, ax=axes[1].tolist(), shrink=0.8)
    return fig


def group_share_by_task(model, tokenizer, dataset, tasks) -> list:
    """The knowledge group's share of the gate weight on the tokens of each task of ``tasks`` ("knowledge" =
    type-1 samples), averaged over the LoRAMoE layers; ``dataset`` has columns prompt, answer, type, task."""
    shares = []
    for task in tasks:
        subset = dataset.select([i for i, t in enumerate(dataset["task"]) if t == task])
        _, W = mean_gates_by_type(model, tokenizer, subset)  # (layers, 2 types, E); only this task's type is filled
        shares.append(W[:, 1 if task == "knowledge" else 0, :W.shape[-1] // 2].sum(-1).mean().item())
    return shares


def plot_share_by_task(by_task: dict, labels: dict, tasks: list):
    """Grouped bars: the knowledge group's share per task (x) and run (colour); by_task = {method: shares}."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 3.8), facecolor="white", layout="constrained")
    width = 0.8 / len(labels)
    for j, m in enumerate(labels):
        x = np.arange(len(tasks)) + (j - (len(labels) - 1) / 2) * width
        ax.bar_label(ax.bar(x, by_task[m], width, label=labels[m], color=color_of(m)), fmt="%.2f", fontsize=7)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set(xticks=range(len(tasks)), xticklabels=[t.replace("knowledge", "knowledge\nquestions") for t in tasks],
           ylim=(0.35, 0.62), ylabel="share on the knowledge group", title="router weight on the knowledge group")
    ax.legend(ncol=len(labels), loc="upper left", fontsize=8)
    return fig
