"""Tune every method's learning rate on the same grid with the same rule: ``python -m minimal_loramoe.lab.tune``.

A comparison is only fair if every method gets its best learning rate (the CPU prototype found that a LoRA at a
lower learning rate matched an untuned LoRAMoE). Rule, the same for all methods: at ``TUNING_SIZE`` (16k) SFT
examples, take the learning rate with the best held-out knowledge among those whose downstream accuracy is at
least ``MIN_DOWNSTREAM`` (mean over the tuning seeds); if none reaches it, the one with the best downstream
accuracy. Tuning seeds are separate from the seeds ``reproduce`` reports. These rates are the *fixed recipe*
that ``reproduce`` holds as the data grows; the fronts (:mod:`minimal_loramoe.lab.fronts`) tune again at 256k.
The result goes to ``runs/tuned_lr.json`` (``--store``: the committed ``minimal_loramoe/data/results/tuned_lr.json``) together with every grid point, so the choice can be checked.
"""
import argparse
import json
import os
import time

import numpy as np
import torch

from . import resources
from ..methods import SHARES_LR_OF, TUNED_METHODS
from ..utils import atomic_write_text
from .reproduce import SCALES, TUNED_LR_FILE, run_experiment
from .runs import pool_results

RATES = (2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)
# rates below RATES where a method's choice would otherwise be the grid's smallest rate (a grid must bracket it)
GRID_BELOW = {"full_ft": (2e-5, 5e-5, 1e-4)}
# Which methods are tuned and which share another's learning rate is in the table of methods (Method.tuned,
# Method.lr_of): the two balancing-loss ablations share the recommended LoRAMoE's, so that they differ from it in
# exactly one thing (the loss term).
MIN_DOWNSTREAM = 0.98
TUNING_SEEDS = (100,)
TUNING_SIZE = 16000  # tuned once here, then held fixed as the data grows (the "fixed recipe" of reproduce)


def select(grid: dict) -> float:
    """Apply the rule to ``{lr: (knowledge, downstream)}``."""
    ok = {lr: kd for lr, kd in grid.items() if kd[1] >= MIN_DOWNSTREAM}
    if ok:
        return max(ok, key=lambda lr: ok[lr][0])
    return max(grid, key=lambda lr: grid[lr][1])


def measure(method: str, lr: float, seeds, size: int = TUNING_SIZE, n_per_task: int = SCALES["cpu"]["n_per_task"],
            threads: int | None = None) -> tuple[float, float]:
    """One grid point: fine-tune ``method`` at ``lr`` on ``size`` examples of the easy mix for each of ``seeds`` and
    return ``(knowledge, downstream)``, each the mean over the seeds. ``threads``: torch CPU threads (a pool
    worker uses 1)."""
    if threads:
        torch.set_num_threads(threads)
    raw = run_experiment([size], seeds, [method], {method: lr}, n_per_task, progress=False)
    finals = [raw["runs"][method][s][size] for s in seeds]
    return float(np.mean([f["knowledge"] for f in finals])), float(np.mean([f["downstream"] for f in finals]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], prog="python -m minimal_loramoe.lab.tune")
    p.add_argument("--methods", nargs="+", choices=TUNED_METHODS, default=list(TUNED_METHODS))
    p.add_argument("--grid", nargs="+", type=float,
                   help="learning rates (default: RATES, plus GRID_BELOW for the methods that need lower ones)")
    p.add_argument("--seeds", nargs="+", type=int, default=list(TUNING_SEEDS))
    p.add_argument("--out", help="results file (default: runs/tuned_lr.json; grid points in it are kept)")
    p.add_argument("--store", action="store_true", help=resources.STORE_HELP)
    p.add_argument("--threads", type=int, help="torch CPU threads of the one process (with --workers 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="grid points measured side by side in this many processes, one CPU thread each (default 1)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    args.out = str(resources.cli_out(args.out, args.store, TUNED_LR_FILE, TUNED_LR_FILE.name))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = TUNING_SIZE
    n_per_task = SCALES["cpu"]["n_per_task"]
    # Grid points from an earlier run of this command are kept, so the grid can be extended (or methods tuned
    # in separate processes) without re-running what is already measured.
    old = json.load(open(args.out)) if os.path.isfile(args.out) else {"lr": {}, "grid": {}}
    table = {m: {float(lr): (v["knowledge"], v["downstream"]) for lr, v in old["grid"].get(m, {}).items()}
             for m in args.methods}
    todo = [(m, lr) for m in args.methods for lr in args.grid or sorted(GRID_BELOW.get(m, ()) + RATES)
            if lr not in table[m]]
    t0 = time.time()

    def report(method, lr, kd):
        table[method][lr] = kd
        print(f"{method:<24} lr {lr:.0e}  knowledge {kd[0]:.3f}  downstream {kd[1]:.3f}   ({time.time() - t0:.0f} s)",
              flush=True)

    if args.workers == 1:
        for method, lr in todo:
            report(method, lr, measure(method, lr, args.seeds, size, n_per_task))
    else:
        calls = [((m, lr), measure, (m, lr, args.seeds, size, n_per_task), {"threads": 1}) for m, lr in todo]
        for (method, lr), kd in pool_results(calls, args.workers):
            report(method, lr, kd)
    chosen = {m: select(table[m]) for m in args.methods}
    for m, lr in chosen.items():
        print(f"--> {m}: lr {lr:.0e}", flush=True)
    old = json.load(open(args.out)) if os.path.isfile(args.out) else old  # re-read: a parallel run may have written
    chosen = {**old["lr"], **chosen}
    for m, shared in SHARES_LR_OF.items():
        if shared in chosen:
            chosen[m] = chosen[shared]
    grid = {**old["grid"], **{m: {f"{lr:g}": {"knowledge": round(k, 4), "downstream": round(d, 4)}
                                  for lr, (k, d) in sorted(g.items())} for m, g in table.items()}}
    out = {"rule": f"best held-out knowledge among lrs with downstream >= {MIN_DOWNSTREAM} at {size} SFT examples "
                   f"(else best downstream); seeds {args.seeds}",
           "shares_lr_of": SHARES_LR_OF, "lr": chosen, "grid": grid}
    atomic_write_text(args.out, json.dumps(out, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
