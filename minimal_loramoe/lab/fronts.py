"""Learning-forgetting fronts: ``python -m minimal_loramoe.lab.fronts run|collect``.

A method that learns less also forgets less (Biderman et al., 2024, *LoRA Learns Less and Forgets Less*), so
"method X keeps more knowledge" means something only at matched learning. Here every method is fine-tuned at
every learning rate of a grid bracketed per method (from "barely learns" to "breaks"), for several seeds, at the
largest SFT size; one point per (method, lr) = (task or new-content accuracy, knowledge kept). The curve through a
method's best points is its *front*: at a given amount learned, how much knowledge the method keeps.

Every run is stored on its own, as soon as it ends, in a *run store* ``<root>/<mix>/<method>/lr<lr>-seed<seed>.json``
(evaluations after each SFT size), so a grid can be extended, resumed after an interruption, and shared with
``reproduce --scale full``. ``collect`` averages the stored runs into ``fronts_<mix>.json``. By default both
work in ``./runs/`` (the store ``runs/store``, the fronts ``runs/fronts_<mix>.json``); ``--store`` uses the
committed store ``minimal_loramoe/data/results/runs`` and writes the committed ``fronts_<mix>.json`` beside it::

    {"mix": name, "sft_sizes": [...], "largest": N,
     "tradeoff": {method: {lr: {"knowledge": x, "downstream": y, "new_content": z,   # means over seeds, at N
                                "knowledge_std": ..., ...   # sample std over seeds (ddof = 1), None for one seed
                                "seeds": [...], "per_seed": {"knowledge": [...], ...},
                                "curve": {"knowledge": [mean per size], "downstream": [...], ...}}}}}

(``new_content`` only for the cipher mix.)
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..methods import FRONTS_LR_GRIDS, METHODS, SLIM_GRID, get_method
from . import resources
from .report import LEARNED, LEARNED_BAR, color_of, diff_ci95, sample_std
from .reproduce import KNOWLEDGE_FRACTION, RESULTS_DIR, RUNS_DIR, SCALES, one_run, plot_curves, run_point
from . import runs
from .runs import RunKey, pool_results
from .world import MIXES

SFT_SIZES = tuple(SCALES["full"]["sft_sizes"])  # evaluated along one pass (constant lr after warm-up)
METRICS = ("knowledge", "knowledge_instruction", "downstream", "new_content")
# Each method's bracketed learning-rate grid is its entry's ``lr_grid`` in the table of methods (edit it there).
GRIDS = FRONTS_LR_GRIDS


def run_grid(points, workers: int = 2, sizes=SFT_SIZES, root=RUNS_DIR, progress=True, keep_adapters=False):
    """Run every ``(mix, method, lr, seed)`` not yet stored, ``workers`` processes side by side (1 thread each).

    ``keep_adapters``: also keep each adapter run's trained adapters (``runs.RunKey.adapter_path``); a stored run
    without them is run again for them."""
    keep = lambda p: keep_adapters and get_method(p[1]).adapter is not None  # noqa: E731  (full FT: no adapters)
    todo = [p for p in points if runs.load(RunKey(*p), sizes, root) is None
            or (keep(p) and not RunKey(*p).adapter_path(root).is_file())]
    if not todo:
        return
    bar = tqdm(total=len(todo), desc="grid runs", disable=not progress)

    def report(p, run):
        f = run["evals"][str(max(sizes))]
        extra = f"  new {f['new_content']:.3f}" if "new_content" in f else ""
        tqdm.write(f"{p[0]:<7}{p[1]:<24}lr {p[2]:<7g}seed {p[3]}  knowledge {f['knowledge']:.3f}  "
                   f"tasks {f['downstream']:.3f}{extra}  ({run['seconds']:.0f} s)")
        bar.update()

    if workers == 1:
        for p in todo:
            report(p, run_point(*p, sizes=sizes, root=root, keep_adapter=keep(p)))
    else:
        for p, run in pool_results([(p, run_point, (*p, sizes, 1, root), {"keep_adapter": keep(p)}) for p in todo],
                                   workers):
            report(p, run)
    bar.close()


def collect(mix: str, root=RUNS_DIR, sizes=SFT_SIZES) -> dict:
    """Average the stored runs of one mix over seeds: the fronts JSON (schema in the module docstring)."""
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {MIXES}, got {mix!r}")
    largest = str(max(sizes))
    out = {"mix": mix, "sft_sizes": list(sizes), "largest": max(sizes), "tradeoff": {}}
    for method in METHODS:
        stored = [runs.read(key, root) for key in runs.keys(root, mix, method)]
        by_lr = {}
        for r in (r for r in stored if largest in r["evals"]):
            by_lr.setdefault(r["lr"], []).append(r)
        for lr in sorted(by_lr):
            out["tradeoff"].setdefault(method, {})[f"{lr:g}"] = seed_mean_point(by_lr[lr], sizes)
    return out


def seed_mean_point(runs, sizes) -> dict:
    """One point of the fronts schema (mean over seeds, sample std with ddof = 1, per-seed values and the mean
    curve over ``sizes``) from the runs of one (method, lr), each ``{"seed": int, "evals": {str(size): {metric:
    value}}}``; the metrics are those of ``METRICS`` present at the largest size."""
    rs = sorted(runs, key=lambda r: r["seed"])
    largest = str(max(sizes))
    point = {"seeds": [r["seed"] for r in rs], "per_seed": {}, "curve": {}}
    for key in METRICS:
        if key not in rs[0]["evals"][largest]:
            continue
        vals = np.array([r["evals"][largest][key] for r in rs])
        point[key] = round(float(vals.mean()), 4)
        std = sample_std(vals)
        point[key + "_std"] = None if std is None else round(std, 4)
        point["per_seed"][key] = vals.round(4).tolist()
        point["curve"][key] = [round(float(np.mean([r["evals"][str(n)][key] for r in rs])), 4) for n in sizes]
    return point


def live_fronts(points, size: int, new_content_fraction: float, seed: int = 0, workers: int = 2, device=None,
                progress: bool = True, eval_sizes=()) -> dict:
    """Fine-tune each ``(method, lr)`` of ``points`` once (seed ``seed``) on ``size`` rows of a denser cipher mix
    (``new_content_fraction`` of new content, ``reproduce.KNOWLEDGE_FRACTION`` of knowledge, the rest the easy
    tasks) and return the fronts schema of :func:`collect` (``mix="cipher"``, one seed per point: no spread), for
    :func:`plot_fronts` and :func:`front_point`. ``workers`` processes side by side, one CPU thread each (on a GPU,
    ``device="cuda"``, one after the other). ``eval_sizes``: also evaluate after these numbers of rows (the
    point's ``curve``). Nothing is stored (``python -m minimal_loramoe.lab.fronts live`` stores, see :func:`live_key`)."""
    for method, lr in points:
        get_method(method)
        if not lr > 0:
            raise ValueError(f"learning rates must be > 0, got {lr!r} for {method!r}")
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not 0 < new_content_fraction <= 1 - KNOWLEDGE_FRACTION:
        raise ValueError(f"new_content_fraction must be in (0, {1 - KNOWLEDGE_FRACTION:g}], got {new_content_fraction!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    sizes = sorted({*eval_sizes, size})
    if sizes[0] < 1 or sizes[-1] != size:
        raise ValueError(f"eval_sizes must lie in [1, size={size}], got {list(eval_sizes)}")
    gpu = device is not None and torch.device(device).type != "cpu"
    kw = dict(mix="cipher", new_content_fraction=new_content_fraction, device=device)
    out = {"mix": "cipher", "sft_sizes": sizes, "largest": size, "new_content_fraction": new_content_fraction,
           "seed": seed, "tradeoff": {}}
    bar = tqdm(total=len(points), desc="live fine-tuning runs", disable=not progress)

    def report(method, lr, evals):
        run = {"seed": seed, "evals": {str(n): {k: v for k, v in e.items() if k in METRICS} for n, e in evals.items()}}
        out["tradeoff"].setdefault(method, {})[f"{lr:g}"] = seed_mean_point([run], sizes)
        bar.update()

    if workers == 1 or gpu:
        for method, lr in points:
            report(method, lr, one_run(method, lr, seed, sizes, **kw))
    else:
        calls = [((m, lr), one_run, (m, lr, seed, sizes), {"threads": 1, **kw}) for m, lr in points]
        for (method, lr), evals in pool_results(calls, workers):  # in the order they end: sorted below
            report(method, lr, evals)
    bar.close()
    order = [m for m, _ in points]
    out["tradeoff"] = {m: dict(sorted(out["tradeoff"][m].items(), key=lambda kv: float(kv[0])))
                       for m in dict.fromkeys(order)}
    return out


LIVE_FILE = "live_cipher.json"  # the search for chapter 7's live setting: {live_key: live_fronts(...)}


def live_key(size: int, new_content_fraction: float, seed: int = 0) -> str:
    """The key of one live setting in ``live_cipher.json``: ``"f0.7-n64000-seed0"``."""
    return f"f{new_content_fraction:g}-n{size}-seed{seed}"


def run_live(path, points, size, new_content_fraction, seed=0, workers=2, eval_sizes=(), progress=True) -> dict:
    """:func:`live_fronts` for the ``points`` not yet in the JSON file ``path``, merged into it (resumable: the file
    is rewritten after the runs, every earlier point kept). Returns that setting's fronts."""
    path = Path(path)
    store = json.loads(path.read_text()) if path.is_file() else {}
    key = live_key(size, new_content_fraction, seed)
    have = store.get(key, {"tradeoff": {}})
    todo = [(m, lr) for m, lr in points if f"{lr:g}" not in have["tradeoff"].get(m, {})]
    if todo:
        new = live_fronts(todo, size, new_content_fraction, seed, workers, progress=progress, eval_sizes=eval_sizes)
        if have["tradeoff"] and new["sft_sizes"] != have["sft_sizes"]:
            raise ValueError(f"{path}: {key} was evaluated at {have['sft_sizes']}, not {new['sft_sizes']}")
        for m, pts in new["tradeoff"].items():
            have["tradeoff"].setdefault(m, {}).update(pts)
            have["tradeoff"][m] = dict(sorted(have["tradeoff"][m].items(), key=lambda kv: float(kv[0])))
        store[key] = {**new, "tradeoff": have["tradeoff"]}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(store, indent=1))
        tmp.replace(path)
    return store[key]


def best_at(fronts: dict, method: str, learned: str = "downstream", at_least: float = LEARNED_BAR):
    """The method's *front point* (the book's one rule, :mod:`minimal_loramoe.lab.report`): the learning rate (as
    stored, e.g. ``"0.001"``) and point with the most mean knowledge among the method's points whose mean
    ``learned`` ("downstream" or "new_content") is at least ``at_least``; ``(None, None)`` if none did."""
    if learned not in ("downstream", "new_content"):
        raise ValueError(f"learned must be 'downstream' or 'new_content', got {learned!r}")
    points = {lr: p for lr, p in fronts["tradeoff"].get(method, {}).items() if p.get(learned, -1) >= at_least}
    if not points:
        return None, None
    lr = max(points, key=lambda k: points[k]["knowledge"])
    return lr, points[lr]


def front_point(fronts: dict, method: str) -> dict | None:
    """:func:`best_at` with the mix's own learning measure (``report.LEARNED``) and the book's bar, plus what a
    reviewer checks: ``{"lr", "point", "rates" (all run, ascending), "bracketed" (the chosen rate is neither the
    smallest nor the largest run), "seeds"}``; ``None`` if no rate learned enough."""
    lr, point = best_at(fronts, method, LEARNED[fronts["mix"]])
    if point is None:
        return None
    rates = sorted(fronts["tradeoff"][method], key=float)
    return {"lr": lr, "point": point, "rates": rates, "bracketed": rates[0] != lr != rates[-1],
            "seeds": len(point["seeds"])}


def family_point(fronts: dict, base: str) -> dict:
    """The book's rule over a method *and its variants* (``methods.Method.variant_of``: e.g. SLIM at every L1
    weight and DARE rate): ``{"points": {(name, lr): point} of every one run, "best": (name, lr, point) -- the most
    knowledge among the points that learned enough (``report.LEARNED``, ``LEARNED_BAR``), or None --,
    "most_learned": (name, lr, point) -- the point that learned most, ties to more knowledge}``."""
    from ..methods import TABLE
    names = [n for n, m in TABLE.items() if n == base or m.variant_of == base]
    if base == "slim":
        names += [n for n in SLIM_GRID.values() if n not in names]  # slim_no_merge: a corner of SLIM's grid
    learned = LEARNED[fronts["mix"]]
    points = {(n, lr): p for n in names for lr, p in fronts["tradeoff"].get(n, {}).items()}
    if not points:
        raise ValueError(f"no runs of {base!r} or its variants in these fronts")
    passed = {k: p for k, p in points.items() if p.get(learned, -1) >= LEARNED_BAR}
    best = max(passed, key=lambda k: passed[k]["knowledge"]) if passed else None
    top = max(points, key=lambda k: (points[k].get(learned, -1), points[k]["knowledge"]))
    return {"points": points, "best": None if best is None else (*best, passed[best]),
            "most_learned": (*top, points[top])}


def compare(fronts: dict, a: str, b: str) -> dict:
    """Front point of ``a`` minus front point of ``b`` in mean knowledge, with its 95 % interval (Welch, per-seed
    values): ``{"diff", "low", "high", "clear"}`` (``clear``: the interval excludes 0)."""
    pa, pb = front_point(fronts, a), front_point(fronts, b)
    if pa is None or pb is None:
        missing = a if pa is None else b
        raise ValueError(f"{missing!r} has no point that learned {LEARNED[fronts['mix']]} >= {LEARNED_BAR}")
    diff, low, high = diff_ci95(pa["point"]["per_seed"]["knowledge"], pb["point"]["per_seed"]["knowledge"])
    return {"diff": diff, "low": low, "high": high, "clear": low is not None and (low > 0 or high < 0)}


def pareto(points: dict, learned: str) -> list:
    """The learning rates of ``points`` (``{lr: point}``) on the front: no other point learned at least as much and
    kept at least as much knowledge (better in one). Ordered by what was learned."""
    xy = {lr: (p[learned], p["knowledge"]) for lr, p in points.items()}
    front = [lr for lr, (x, y) in xy.items()
             if not any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in xy.values())]
    return sorted(front, key=lambda lr: xy[lr])


def plot_fronts(fronts: dict, learned: str = "downstream", methods=("full_ft", "lora", "loramoe"), ax=None):
    """Knowledge kept (y) against what was learned (x): every point of a method (one per learning rate, labelled,
    error bars: sample standard deviation over seeds, none for one seed) and, as a line, its front — the points
    no other point of the method beats in both (:func:`pareto`); the front point of the book's rule
    (:func:`best_at`) is ringed. One colour per method (``report.METHOD_COLORS``). Up and to the right is better;
    the dotted line is the rule's bar.
    """
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5), facecolor="white")
    for method in methods:
        grid = fronts["tradeoff"].get(method, {})
        if not grid:
            continue
        colour = color_of(method)
        front = pareto(grid, learned)
        ax.plot([grid[lr][learned] for lr in front], [grid[lr]["knowledge"] for lr in front], "-", color=colour,
                label=method)
        lrs = sorted(grid, key=float)
        x = [grid[lr][learned] for lr in lrs]
        y = [grid[lr]["knowledge"] for lr in lrs]
        xe = [grid[lr].get(learned + "_std") or 0.0 for lr in lrs]
        ye = [grid[lr].get("knowledge_std") or 0.0 for lr in lrs]
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", capsize=2, color=colour)
        for xi, yi, lr in zip(x, y, lrs):
            ax.annotate(f"{float(lr):g}", (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7,
                        color=colour)
        _, point = best_at(fronts, method, learned)
        if point is not None:
            ax.scatter([point[learned]], [point["knowledge"]], s=160, facecolors="none", edgecolors=colour, lw=1.5)
    ax.axvline(LEARNED_BAR, color="grey", ls=":", lw=1)
    what = {"easy": "task accuracy (4 easy tasks)", "cipher": "new-content accuracy (cipher)",
            "smollm2_reversal": "task accuracy (word reversal)",
            "smollm2_codes": "new-content accuracy (registry codes)"}.get(fronts["mix"], learned)
    ax.set(xlabel=what, ylabel="held-out knowledge kept", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
           title=f"{fronts['mix']} mix, {fronts['largest'] // 1000}k SFT examples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return ax


def plot_family(fronts: dict, base: str, ax=None, label=None):
    """Every point of a method and its variants (:func:`family_point`; SLIM: every L1 weight and DARE rate) in the
    method's colour, each labelled ``l1 weight / p @ lr`` (for SLIM's grid) or ``name @ lr``, the family's front as a
    dashed line and the rule's front point ringed; on the axes of :func:`plot_fronts` (call that one first for the
    other methods)."""
    import matplotlib.pyplot as plt
    from ..methods import TABLE
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5), facecolor="white")
    fam = family_point(fronts, base)
    learned, colour = LEARNED[fronts["mix"]], color_of(base)
    keyed = {f"{n}@{lr}": p for (n, lr), p in fam["points"].items()}
    front = pareto(keyed, learned)
    ax.plot([keyed[k][learned] for k in front], [keyed[k]["knowledge"] for k in front], "--", color=colour,
            label=label or f"{base}, every setting")
    for (name, lr), p in fam["points"].items():
        s = TABLE[name].settings
        tag = f"{s['l1_weight']:g}/{s['mask_rate']:g}" if "l1_weight" in s else name
        ax.scatter([p[learned]], [p["knowledge"]], marker="s", s=22, color=colour)
        ax.annotate(f"{tag}@{float(lr):g}", (p[learned], p["knowledge"]), textcoords="offset points",
                    xytext=(4, -8), fontsize=6, color=colour)
    if fam["best"] is not None:
        p = fam["best"][2]
        ax.scatter([p[learned]], [p["knowledge"]], s=160, facecolors="none", edgecolors=colour, lw=1.5)
    ax.legend(fontsize=8, loc="lower left")
    return ax


def summary_figure(fixed: dict, easy: dict, cipher: dict, path=None, methods=("full_ft", "lora", "loramoe")):
    """The book's landing figure: forgetting as the data grows under a fixed recipe (``reproduce --scale full``),
    then the learning-forgetting fronts at the largest size on the easy and on the cipher mix."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), facecolor="white")
    plot_curves(fixed, "knowledge", axes[0], methods, "fixed recipe: lr tuned at 16k, data grows")
    axes[0].set(xlabel="SFT examples (easy mix)", ylabel="held-out knowledge kept")
    axes[0].legend(fontsize=8, loc="lower left")
    plot_fronts(easy, "downstream", methods, axes[1])
    plot_fronts(cipher, "new_content", methods, axes[2])
    axes[1].set_xlim(0.85, 1.01)  # every easy-mix point learned most of the tasks: zoom in
    axes[1].set_title(f"fronts, easy mix ({easy['largest'] // 1000}k): each point one lr")
    axes[2].set_title(f"fronts, cipher mix ({cipher['largest'] // 1000}k): new content to learn")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110, facecolor="white")
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], prog="python -m minimal_loramoe.lab.fronts")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="fine-tune the grid points not yet stored")
    r.add_argument("--mix", choices=MIXES, required=True)
    r.add_argument("--methods", nargs="+", choices=METHODS, default=["full_ft", "lora", "loramoe"], metavar="METHOD",
                   help="methods.METHODS (default: full_ft lora loramoe)")
    r.add_argument("--lrs", nargs="+", type=float, help="learning rates (default: each method's grid in GRIDS)")
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--keep-adapters", action="store_true",
                   help="keep each run's trained adapters beside it (for python -m minimal_loramoe.lab.mechanism)")
    lv = sub.add_parser("live", help="the search for a live setting: (method, lr) points on a denser cipher mix, "
                        f"merged into {LIVE_FILE}")
    lv.add_argument("--fraction", type=float, required=True, help="share of new-content (cipher) rows")
    lv.add_argument("--size", type=int, default=64000, help="SFT rows per run")
    lv.add_argument("--methods", nargs="+", choices=METHODS, required=True, metavar="METHOD", help="methods.METHODS")
    lv.add_argument("--lrs", nargs="+", type=float, required=True, help="every method at every rate")
    lv.add_argument("--seed", type=int, default=0)
    lv.add_argument("--eval-sizes", nargs="*", type=int, default=[], help="also evaluate after these many rows")
    lv.add_argument("--workers", type=int, default=2)
    c = sub.add_parser("collect", help="average the stored runs into fronts_<mix>.json")
    c.add_argument("--mix", nargs="+", choices=MIXES, default=list(MIXES))
    c.add_argument("--figure", help="also draw the summary figure (reads the committed reproduce_cpu.json)")
    lv.add_argument("--store", action="store_true", help=resources.STORE_HELP + f": the committed {LIVE_FILE}")
    for q in (r, c):
        q.add_argument("--root", help="the run store (default: runs/store)")
        q.add_argument("--store", action="store_true", help=resources.STORE_HELP +
                       ": the committed run store, and collect writes the committed fronts_<mix>.json")
    args = p.parse_args(argv)
    if args.command == "live":
        path = (RESULTS_DIR if args.store else resources.DEFAULT_OUT_DIR) / LIVE_FILE
        live = run_live(path, [(m, lr) for m in args.methods for lr in args.lrs], args.size, args.fraction,
                        args.seed, args.workers, args.eval_sizes)
        for m, pts in live["tradeoff"].items():
            for lr, q in pts.items():
                print(f"{m:<24}lr {float(lr):<8g}knowledge {q['knowledge']:.3f}  new content {q['new_content']:.3f}")
        print(f"written to {path}")
        return
    root = resources.cli_out(args.root, args.store, RUNS_DIR, "store")
    out_dir = RESULTS_DIR if args.store else resources.DEFAULT_OUT_DIR
    if args.command == "run":
        points = [(args.mix, m, lr, s) for s in args.seeds for m in args.methods for lr in (args.lrs or GRIDS[m])]
        run_grid(points, args.workers, root=root, keep_adapters=args.keep_adapters)
    else:
        for mix in args.mix:
            out = collect(mix, root=root)
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"fronts_{mix}.json"
            path.write_text(json.dumps(out, indent=1))
            print(f"{mix}: {sum(len(v) for v in out['tradeoff'].values())} points written to {path}")
        if args.figure:
            load = lambda name: json.loads(((out_dir if name.startswith("fronts") else RESULTS_DIR)  # noqa: E731
                                            / name).read_text())
            summary_figure(load("reproduce_cpu.json"), load("fronts_easy.json"), load("fronts_cipher.json"),
                           args.figure)
            print(f"figure saved to {args.figure}")


if __name__ == "__main__":
    main()
