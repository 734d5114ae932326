"""Draw the book's explanatory diagrams with matplotlib (no data, no model: pure drawing, so it is reproducible).

    python book/make_diagrams.py            # writes notebooks/images/loramoe_layer.png and .svg

The LoRAMoE layer diagram is used by chapter 5 (a Markdown figure, ``images/loramoe_layer.png`` next to the
notebooks) and by the landing page ``book/intro.md`` (through the ``book/notebooks`` symlink), so there is one
copy of the file. Re-run this script after changing it and commit the images it writes.

Top panel: the layer as the paper's equation reads (Dou et al., 2024, Eq. 4-5) -- a frozen W0, E LoRA experts
B_i A_i, a router whose softmax gates weigh the experts token by token. Bottom panel: the same sum computed in
the fused, stacked form of ``minimal_loramoe.LoRAMoELinear.forward``.
"""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script that only writes files: no window, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Polygon, Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "notebooks" / "images"

FROZEN = "#d9d9d9"  # grey: never trained
ROUTER = "#a6d96a"  # green: the router (trainable)
EXPERT_COLOURS = ("#4c72b0", "#dd8452", "#8172b3")  # expert 1, expert 2, expert E (trainable)
EXPERT_NAMES = ("1", "2", "E")
GATES = (0.62, 0.28, 0.10)  # an example softmax output for one token (sums to 1, drawn as bars)
TEXT = dict(ha="center", va="center", fontsize=11)


def box(ax, x, y, w, h, text, colour, hatch=None, fontsize=11, text_colour="black", lw=1.2):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12", fc=colour,
                                ec="black", lw=lw, hatch=hatch))
    ax.text(x + w / 2, y + h / 2, text, **{**TEXT, "fontsize": fontsize, "color": text_colour})


def arrow(ax, p0, p1, colour="black", lw=1.4, style="-|>", ls="-"):
    ax.add_patch(FancyArrowPatch(p0, p1, arrowstyle=style, mutation_scale=13, color=colour, lw=lw, ls=ls,
                                 shrinkA=0, shrinkB=0))


def op(ax, x, y, symbol, r=0.27, colour="white"):
    "A circle with an operator in it: the places where vectors are multiplied or added."
    ax.add_patch(Circle((x, y), r, fc=colour, ec="black", lw=1.2, zorder=3))
    ax.text(x, y, symbol, ha="center", va="center", fontsize=14, zorder=4)


def trapezoid(ax, x, y, w, h_left, h_right, colour, label):
    "A matrix drawn as a trapezoid: its left side is the input width, its right side the output width."
    pts = [(x, y - h_left / 2), (x + w, y - h_right / 2), (x + w, y + h_right / 2), (x, y + h_left / 2)]
    ax.add_patch(Polygon(pts, closed=True, fc=colour, ec="black", lw=1.1, alpha=0.9))
    ax.text(x + w / 2, y, label, ha="center", va="center", fontsize=11, color="white", fontweight="bold")


def vector(ax, x, y, w, h, colours, label=None, label_side="below"):
    "A column vector split into len(colours) equal slices, bottom to top."
    n = len(colours)
    for k, c in enumerate(colours):
        ax.add_patch(Rectangle((x, y + k * h / n), w, h / n, fc=c, ec="black", lw=0.8))
    if label:
        ty = y - 0.3 if label_side == "below" else y + h + 0.3
        ax.text(x + w / 2, ty, label, ha="center", va="top" if label_side == "below" else "bottom", fontsize=10)


def equation_panel(ax):
    "The layer as the paper's sum: frozen W0, E LoRA experts, router -> softmax gates, weighted sum."
    ax.set_title(r"(a) One LoRAMoE layer, for one token $x$:   "
                 r"$y = W_0 x + b + \sum_{i=1}^{E} g_i(x)\,\frac{\alpha}{r}\,B_i A_i x$,   "
                 r"$g(x) = \mathrm{softmax}(W_r x)$", fontsize=13, loc="left")
    # the input token
    vector(ax, 0.2, 3.2, 0.35, 3.6, ["#f0f0f0"] * 6)
    ax.text(0.375, 7.2, r"$x$", fontsize=15, ha="center")
    ax.text(0.375, 2.8, r"$d_\mathrm{in}$", fontsize=10, ha="center", va="top")
    ax.plot([0.55, 1.3], [5.0, 5.0], color="black", lw=1.4)
    ax.plot([1.3, 1.3], [0.9, 9.0], color="black", lw=1.4)  # the trunk that feeds every path

    # frozen path
    arrow(ax, (1.3, 9.0), (3.0, 9.0))
    box(ax, 3.0, 8.45, 3.4, 1.1, "$W_0$ (and $b$), frozen\n" r"$d_\mathrm{out}\times d_\mathrm{in}$", FROZEN,
        fontsize=10.5)
    arrow(ax, (6.4, 9.0), (12.63, 9.0))
    ax.text(9.6, 9.25, r"$W_0 x + b$", fontsize=11, ha="center", va="bottom")

    # experts
    ys = (7.2, 5.6, 3.4)
    ax.add_patch(FancyBboxPatch((2.55, 2.3), 5.55, 5.8, boxstyle="round,pad=0.05,rounding_size=0.25",
                                fc="none", ec="#555555", lw=1.0, ls="--"))
    ax.text(5.3, 2.42, "E LoRA experts (trainable)", fontsize=10, ha="center", va="bottom", color="#333333")
    for y, c, name in zip(ys, EXPERT_COLOURS, EXPERT_NAMES):
        arrow(ax, (1.3, y), (2.9, y))
        trapezoid(ax, 2.9, y, 1.4, 1.05, 0.32, c, rf"$A_{name}$")
        ax.plot([4.3, 4.75], [y, y], color=c, lw=5, solid_capstyle="butt")  # the r-wide bottleneck
        trapezoid(ax, 4.75, y, 1.4, 0.32, 1.05, c, rf"$B_{name}$")
        ax.text(6.95, y, r"$\times\frac{\alpha}{r}$", fontsize=12, ha="center", va="center")
        arrow(ax, (7.45, y), (10.13, y), colour=c)
        ax.text(8.75, y + 0.12, rf"$\Delta_{name}(x)$", fontsize=11, ha="center", va="bottom", color=c)
    ax.text(4.5, ys[0] - 0.72, r"rank $r$", fontsize=9, ha="center", va="center", color="#333333")
    ax.text(5.5, 4.55, r"$\vdots$", fontsize=16, ha="center", va="center")
    ax.text(8.75, 4.55, r"$\vdots$", fontsize=16, ha="center", va="center")

    # router -> softmax -> gates
    arrow(ax, (1.3, 0.9), (2.9, 0.9))
    box(ax, 2.9, 0.45, 2.3, 0.9, "router $W_r$\n" r"$E\times d_\mathrm{in}$, trainable", ROUTER, fontsize=10)
    arrow(ax, (5.2, 0.9), (5.7, 0.9))
    box(ax, 5.7, 0.45, 1.45, 0.9, "softmax\n(float32)", "white", fontsize=10)
    arrow(ax, (7.15, 0.9), (7.7, 0.9))
    bar_x0, bar_w = 7.75, 0.42
    for k, (g, c) in enumerate(zip(GATES, EXPERT_COLOURS)):
        ax.add_patch(Rectangle((bar_x0 + k * (bar_w + 0.12), 0.35), bar_w, 1.6 * g, fc=c, ec="black", lw=0.8))
        ax.text(bar_x0 + k * (bar_w + 0.12) + bar_w / 2, 0.3, rf"$g_{EXPERT_NAMES[k]}$", fontsize=10,
                ha="center", va="top")
    ax.text(bar_x0 + 0.8, 1.72, r"every $g_i > 0$, $g_1 + \cdots + g_E = 1$", fontsize=9.5, ha="center",
            va="bottom")

    # the gate vector travels up one bus to the multiplications: expert i's output is scaled by g_i(x)
    ax.plot([9.45, 10.4], [0.9, 0.9], color="#2b7a0b", lw=2.2)
    ax.plot([10.4, 10.4], [0.9, ys[0]], color="#2b7a0b", lw=2.2, zorder=1)
    ax.text(10.55, 1.6, r"$g(x)$", fontsize=11, ha="left", va="center", color="#2b7a0b")
    for y, c, name in zip(ys, EXPERT_COLOURS, EXPERT_NAMES):
        op(ax, 10.4, y, r"$\times$")
        ax.text(10.1, y - 0.38, rf"$g_{name}$", fontsize=10, ha="right", va="top", color=c)
    op(ax, 11.6, 5.6, r"$\Sigma$")
    for y, c in zip(ys, EXPERT_COLOURS):
        arrow(ax, (10.67, y), (11.6 - 0.27 * 0.8, 5.6 + (y - 5.6) * 0.16), colour=c)
    arrow(ax, (11.87, 5.6), (12.9, 5.6))
    ax.text(12.3, 5.3, r"$\Sigma_i\, g_i \Delta_i$", fontsize=10, ha="center", va="top")
    op(ax, 12.9, 9.0, "+")
    ax.plot([12.9, 12.9], [5.6, 8.73], color="black", lw=1.4)
    arrow(ax, (12.9, 8.6), (12.9, 8.73))
    arrow(ax, (13.17, 9.0), (14.2, 9.0))
    vector(ax, 14.25, 7.5, 0.35, 3.0, ["#f0f0f0"] * 5)
    ax.text(14.425, 10.7, r"$y$", fontsize=15, ha="center")
    ax.text(14.425, 7.1, r"$d_\mathrm{out}$", fontsize=10, ha="center", va="top")


def fused_panel(ax):
    "The same sum as two matmuls: stacked A's, gate-scaled r-slices, concatenated B's."
    ax.set_title(r"(b) The same layer, fused: stack the $A_i$, scale expert $i$'s $r$-wide slice by "
                 r"$\frac{\alpha}{r} g_i(x)$, apply $[B_1 \cdots B_E]$", fontsize=13, loc="left")
    colours = list(EXPERT_COLOURS)
    mid = 3.0
    vector(ax, 0.2, mid - 1.8, 0.35, 3.6, ["#f0f0f0"] * 6)
    ax.text(0.375, mid + 2.1, r"$x$", fontsize=15, ha="center")
    arrow(ax, (0.6, mid), (1.6, mid))
    # A_stack: (E r, d_in), one horizontal stripe per expert (top = expert 1)
    for k, c in enumerate(reversed(colours)):
        ax.add_patch(Rectangle((1.6, mid - 0.9 + k * 0.6), 2.6, 0.6, fc=c, ec="black", lw=0.8, alpha=0.9))
    for k, name in enumerate(reversed(EXPERT_NAMES)):
        ax.text(2.9, mid - 0.6 + k * 0.6, rf"$A_{name}$", fontsize=11, ha="center", va="center", color="white",
                fontweight="bold")
    ax.text(2.9, mid - 1.15, r"$A_\mathrm{stack}$: $Er \times d_\mathrm{in}$", fontsize=10, ha="center", va="top")
    ax.text(2.9, mid + 1.15, "one matmul", fontsize=10, ha="center", va="bottom")
    arrow(ax, (4.2, mid), (5.0, mid))
    # h = A_stack x: E slices of r numbers
    vector(ax, 5.05, mid - 0.9, 0.35, 1.8, colours[::-1])
    ax.text(5.225, mid - 1.15, r"$h$: $E r$", fontsize=10, ha="center", va="top")
    arrow(ax, (5.45, mid), (6.25, mid))
    op(ax, 6.55, mid, r"$\odot$")
    ax.text(6.55, mid + 0.5, "scale slice $i$\n" r"by $\frac{\alpha}{r}\, g_i$", fontsize=10, ha="center",
            va="bottom")
    # the gates enter from below, from the router of panel (a)
    arrow(ax, (6.55, 0.45), (6.55, mid - 0.28), colour="#2b7a0b", lw=2.2)
    ax.text(6.7, 0.75, r"$g(x)$ from the router", fontsize=10, ha="left", va="center", color="#2b7a0b")
    arrow(ax, (6.85, mid), (7.55, mid))
    # scaled h: the slices shaded by their gates
    for k, (c, g) in enumerate(zip(colours[::-1], GATES[::-1])):
        ax.add_patch(Rectangle((7.6, mid - 0.9 + k * 0.6), 0.35, 0.6, fc=c, ec="black", lw=0.8, alpha=0.25 + 0.75 * g))
    ax.text(7.775, mid - 1.15, "scaled", fontsize=10, ha="center", va="top")
    arrow(ax, (8.0, mid), (8.8, mid))
    # B_cat: (d_out, E r), one vertical stripe per expert
    for k, (c, name) in enumerate(zip(colours, EXPERT_NAMES)):
        ax.add_patch(Rectangle((8.8 + k * 0.75, mid - 1.3), 0.75, 2.6, fc=c, ec="black", lw=0.8, alpha=0.9))
        ax.text(8.8 + k * 0.75 + 0.375, mid, rf"$B_{name}$", fontsize=11, ha="center", va="center", color="white",
                fontweight="bold")
    ax.text(9.925, mid - 1.55, r"$[B_1 \cdots B_E]$: $d_\mathrm{out} \times E r$", fontsize=10, ha="center", va="top")
    ax.text(9.925, mid + 1.55, "one matmul", fontsize=10, ha="center", va="bottom")
    arrow(ax, (11.05, mid), (12.63, mid))
    op(ax, 12.9, mid, "+")
    arrow(ax, (12.9, mid + 1.5), (12.9, mid + 0.27))
    ax.text(12.9, mid + 1.6, r"$W_0 x + b$", fontsize=11, ha="center", va="bottom")
    arrow(ax, (13.17, mid), (14.2, mid))
    vector(ax, 14.25, mid - 1.5, 0.35, 3.0, ["#f0f0f0"] * 5)
    ax.text(14.425, mid + 1.7, r"$y$", fontsize=15, ha="center")
    ax.text(7.5, -0.35, r"cost: one LoRA of rank $E r$ (its two matmuls) $+$ the router ($E\, d_\mathrm{in}$ per token) "
            r"$+$ $E r$ scalings; nothing approximated",
            fontsize=10.5, ha="center", va="center", style="italic")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT, help="folder for the images")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 13), facecolor="white", height_ratios=(11, 6.8))
    top.set(xlim=(0, 15), ylim=(0, 11), aspect="equal")
    bottom.set(xlim=(0, 15), ylim=(-0.8, 6.0), aspect="equal")
    for ax in (top, bottom):
        ax.axis("off")
    equation_panel(top)
    fused_panel(bottom)
    for ext in ("png", "svg"):
        path = args.out / f"loramoe_layer.{ext}"
        fig.savefig(path, dpi=150, facecolor="white", bbox_inches="tight",
                    metadata={"Date": None} if ext == "svg" else {"Software": None})
        print(f"make_diagrams: wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
