"""The whole forgetting experiment as one command: ``python -m minimal_loramoe.lab.reproduce``.

Starting from the shipped pretrained tiny LLaMA, the methods of :mod:`minimal_loramoe.finetune` are fine-tuned on
a growing SFT mix (knowledge questions, type 1, and downstream tasks, type 0; ``--mix cipher`` adds a task with new
content) for one or several seeds, and evaluated after 4k, 16k, 64k and 256k examples (one pass) on

* knowledge: closed-book QA on the *held-out* countries (facts only their bios stated in pretraining), in the
  pretraining format ``Q : ... A :`` and in the instruction format the SFT teaches;
* downstream: exact-match accuracy on the four instruction tasks;
* how far the base weights moved, and (LoRAMoE) the router weight on each expert group by sample type.

Each method's learning rate comes from ``minimal_loramoe/data/results/tuned_lr.json``, written by
``python -m minimal_loramoe.lab.tune`` (the same grid and the same selection rule for every method, tuned once at 16k
examples and then held fixed as the data grows, as a practitioner -- and the paper -- would). This answers "what
happens as the SFT data grows under a fixed recipe"; :mod:`minimal_loramoe.lab.fronts` answers "which method is better
when each gets its best learning rate at the largest size".

Scales: ``cpu`` (the default, the README's main job: full FT, LoRA and LoRAMoE, one seed, about 6 minutes on 2
cores), ``full`` (every method, seeds 0-2: the committed ``minimal_loramoe/data/results/reproduce_cpu.json``; its runs are
kept in the run store ``minimal_loramoe/data/results/runs/`` shared with the fronts, so a stored run is read, not
re-run; new runs go to ``runs/store`` unless ``--store``), ``gpu`` (up to
1M examples) and ``tiny`` (a smoke test).
"""
import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import resources
from .runs import RunKey, pool_results
from . import runs
from .evaluate import answer_accuracy
from ..finetune import FinetuneConfig, finetune, weight_change
from ..methods import FRONTS_ONLY, METHODS, get_method
from .model import load_pretrained
from ..routing import group_weight
from ..slim import dare_masked
from .world import CIPHER, MIXES, knowledge_eval, new_content_eval, sft_dataset, task_eval

RESULTS_DIR = resources.RESULTS_DIR  # the committed results: package data (minimal_loramoe/data/results)
TUNED_LR_FILE = RESULTS_DIR / "tuned_lr.json"
RUNS_DIR = resources.RUNS_DIR  # one JSON per (mix, method, lr, seed): the run store

MAIN_METHODS = ("full_ft", "lora", "loramoe")
# sizes (number of SFT examples), seeds, task-eval examples per task, default methods, and whether runs go through
# the run store, per scale
SCALES = {
    "tiny": dict(sft_sizes=[64, 128, 256], seeds=[0], n_per_task=20, methods=MAIN_METHODS, store=False),
    "cpu": dict(sft_sizes=[4000, 16000, 64000, 256000], seeds=[0], n_per_task=100, methods=MAIN_METHODS,
                store=False),
    "full": dict(sft_sizes=[4000, 16000, 64000, 256000], seeds=[0, 1, 2], n_per_task=100, methods=None,
                 store=True),  # methods=None: every label in DEFAULT_RUNS
    "gpu": dict(sft_sizes=[16000, 64000, 256000, 1024000], seeds=[0, 1, 2], n_per_task=200, methods=None,
                store=False),
}
KNOWLEDGE_FRACTION = 0.2  # share of world-knowledge questions (type 1) in every SFT mix, as in the paper's mixes
# Extra runs reported beside the tuned methods: label -> (method, whose tuned learning rate it uses).
# Full fine-tuning's knowledge is very sensitive to its learning rate: at LoRAMoE's learning rate (a rate at which
# full fine-tuning learns the tasks just as well) it forgets far more than at its own tuned, smaller rate.
EXTRA_RUNS = {"full_ft_at_loramoe_lr": ("full_ft", "loramoe")}
RUN_LABELS = METHODS + tuple(EXTRA_RUNS)
# Methods without a tuned learning rate (methods.FRONTS_ONLY: SLIM's, the two one-change LBC controls) are compared
# on the fronts (python -m minimal_loramoe.lab.fronts)
DEFAULT_RUNS = tuple(m for m in RUN_LABELS if m not in FRONTS_ONLY)


def tuned_learning_rates(path=TUNED_LR_FILE) -> dict:
    """``{method: lr}`` chosen by ``python -m minimal_loramoe.lab.tune``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tuned learning rates at {str(path)!r}; run `python -m minimal_loramoe.lab.tune`")
    lrs = json.loads(path.read_text())["lr"]
    for label, (_, lr_of) in EXTRA_RUNS.items():
        if lr_of in lrs:
            lrs[label] = lrs[lr_of]
    return lrs


def make_evaluator(tokenizer, world, n_per_task: int, mix: str = "easy"):
    """``evaluate(model) -> dict`` of every number the experiment reports for one checkpoint.

    ``downstream`` is the mean exact match of the four easy tasks in both mixes; the cipher mix adds
    ``new_content``, the exact match over all 676 cipher questions it trains on.
    """
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {MIXES}, got {mix!r}")
    k_qa = knowledge_eval(world, "heldout", "qa")
    k_inst = knowledge_eval(world, "heldout", "instruction")
    tasks = task_eval(world, n_per_task)
    new = new_content_eval(world) if mix == CIPHER else None

    def evaluate(model) -> dict:
        per_task = answer_accuracy(model, tokenizer, tasks, by_task=True)
        out = {"knowledge": answer_accuracy(model, tokenizer, k_qa),
               "knowledge_instruction": answer_accuracy(model, tokenizer, k_inst),
               "downstream": float(np.mean(list(per_task.values()))),
               "downstream_by_task": per_task}
        if new is not None:
            out["new_content"] = answer_accuracy(model, tokenizer, new)
        return out

    return evaluate


def routing_set(world, n_per_task: int):
    """A mixed set for router statistics: held-out knowledge questions (type 1) and task prompts (type 0)."""
    from datasets import concatenate_datasets
    return concatenate_datasets([knowledge_eval(world, "heldout", "instruction"), task_eval(world, n_per_task)])


DEFAULT_CHECKPOINT = resources.CHECKPOINT_DIR


def one_run(method, lr, seed, sizes, *, n_per_task=100, checkpoint=None, device=None, progress=False, threads=None,
            config_overrides=None, mix="easy", adapter_path=None, new_content_fraction=None):
    """Fine-tune one (method, lr, seed) -- a run key's order, :class:`runs.RunKey` -- on ``max(sizes)`` examples and
    return its evaluations ``{size: metrics}`` after each of ``sizes`` (runs in a worker process too).

    ``adapter_path``: also write the trained adapters there (``inject.save_adapter_file``; not for full fine-tuning).
    ``new_content_fraction``: the cipher mix's share of new-content rows (None: ``world.sft_dataset``'s default,
    the mix the run store holds)."""
    if threads:
        torch.set_num_threads(threads)
    base, tokenizer, world = load_pretrained(checkpoint or DEFAULT_CHECKPOINT, device=device)
    evaluate = make_evaluator(tokenizer, world, n_per_task, mix)
    dense = {} if new_content_fraction is None else {"new_content_fraction": new_content_fraction}
    data = sft_dataset(world, sizes[-1], knowledge_fraction=KNOWLEDGE_FRACTION, seed=seed, mix=mix, **dense)
    cfg = FinetuneConfig(method=EXTRA_RUNS.get(method, (method,))[0], lr=lr, seed=seed, **(config_overrides or {}))
    t0 = time.time()
    model, hist = finetune(base, tokenizer, data, cfg, eval_every=sizes, eval_fn=lambda m, n: evaluate(m),
                           device=device, progress=progress)
    evals = hist["evals"]
    final = evals[sizes[-1]]
    final["weight_change"] = weight_change(base, model)
    if get_method(cfg.method).adapter == "LORAMOE":  # it has routers
        with dare_masked(model, cfg.mask_rate, cfg.seed):  # the model the evaluations saw (p = 0: no mask)
            final["router_group_weight"] = group_weight(model, tokenizer, routing_set(world, n_per_task))
    final["seconds"] = round(time.time() - t0, 1)
    if adapter_path is not None:
        from ..inject import save_adapter_file
        save_adapter_file(model, adapter_path)
    return evals


def run_path(mix: str, method: str, lr: float, seed: int, root=RUNS_DIR) -> Path:
    """``RunKey(mix, method, lr, seed).path(root)`` (:mod:`minimal_loramoe.lab.runs`)."""
    return RunKey(mix, method, lr, seed).path(root)


def load_run(mix, method, lr, seed, sizes, root=RUNS_DIR, n_per_task=100):
    """``runs.load``: the stored run, or None if there is none that covers ``sizes`` with the same task-eval size."""
    return runs.load(RunKey(mix, method, lr, seed), sizes, root, n_per_task)


def adapter_path(mix: str, method: str, lr: float, seed: int, root=RUNS_DIR) -> Path:
    """``RunKey(mix, method, lr, seed).adapter_path(root)``: where the run store keeps a run's trained adapters,
    ``<mix>/<method>/adapters/lr<lr>-seed<seed>.safetensors`` (beside it, ``.json``: the evaluations of the run
    that wrote them and whether they repeat the stored run)."""
    return RunKey(mix, method, lr, seed).adapter_path(root)


def run_point(mix, method, lr, seed, sizes, threads=1, root=RUNS_DIR, n_per_task=100, keep_adapter=False) -> dict:
    """Fine-tune one grid point (or return it from the store) and store it. Runs in a worker process too.

    ``keep_adapter``: also keep the trained adapters (``adapter_path``). A stored run without them is run again
    for them; whether that run repeated the stored evaluations exactly is written beside the adapters."""
    key = RunKey(mix, method, lr, seed)
    run = runs.load(key, sizes, root, n_per_task)
    keep = key.adapter_path(root) if keep_adapter else None
    if run is not None and (keep is None or keep.is_file()):
        return run
    t0 = time.time()
    tmp = None if keep is None else keep.with_name(keep.stem + ".tmp.safetensors")
    if tmp is not None:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    evals = one_run(method, lr, seed, sorted(sizes), n_per_task=n_per_task, threads=threads, mix=mix,
                    adapter_path=tmp)
    if keep is not None:
        fresh = json.loads(json.dumps({str(n): v for n, v in evals.items()}))
        drop = lambda ev: {n: {k: v for k, v in e.items() if k != "seconds"} for n, e in ev.items()}  # noqa: E731
        record = {"mix": mix, "method": method, "lr": lr, "seed": seed, "torch": torch.__version__,
                  "repeats_stored_run": None if run is None else drop(fresh) == drop(run["evals"]), "evals": fresh}
        keep.with_suffix(".json").write_text(json.dumps(record, indent=1))
        tmp.replace(keep)
        if run is not None:
            return run
    run = {"mix": mix, "method": method, "lr": lr, "seed": seed, "sft_sizes": sorted(sizes),
           "n_per_task": n_per_task, "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
           "evals": {str(n): v for n, v in evals.items()}}
    runs.save(key, run, root)
    return run


def _stored_run(method, lr, seed, sizes, *, root=RUNS_DIR, n_per_task=100, threads=None, mix="easy", **defaults):
    """``one_run`` through the run store; a label of ``EXTRA_RUNS`` is stored under the method it runs. The store
    holds runs of the default checkpoint and settings only: ``defaults`` (one_run's other arguments) are ignored,
    :func:`run_experiment` refuses a store with anything else."""
    run = run_point(mix, EXTRA_RUNS.get(method, (method,))[0], lr, seed, sizes, threads, root, n_per_task)
    return {int(n): v for n, v in run["evals"].items()}


def run_experiment(sft_sizes, seeds, methods, lrs: dict, n_per_task: int = 100, checkpoint=None, device=None,
                   progress: bool = True, workers: int = 1, mix: str = "easy", store=None, only_stored: bool = False,
                   **config_overrides) -> dict:
    """Fine-tune every method for every seed once on ``max(sft_sizes)`` examples, evaluating after each size.

    The learning rate is constant after warm-up and the first N examples the run sees are N i.i.d. draws from the
    mix, so the evaluation after N examples measures what a separate run on N examples would (the same
    distribution of data, not the same rows: the random order is drawn over the largest set).
    ``workers > 1`` runs that many fine-tunings side by side in separate processes, one CPU thread each (on a
    small CPU this beats one process with several threads, since the tiny model cannot keep two cores busy).
    ``store``: a run-store folder (e.g. ``RUNS_DIR``): runs found there are read instead of re-run, new runs are
    written there (only with the default checkpoint and settings, the ones the store describes).
    ``only_stored``: with a store, summarise only the runs already stored and run nothing (a method may then have
    fewer seeds than asked; ``summarize`` records which in ``seeds_of``).
    Returns the per-seed numbers: ``{"pretrained": metrics, "runs": {method: {seed: {size: metrics}}}}``.
    """
    for m in methods:
        if m not in RUN_LABELS:
            raise ValueError(f"methods must be among {RUN_LABELS}, got {m!r}")
        if m not in lrs:
            raise ValueError(f"no learning rate given for method {m!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if store is not None and (checkpoint is not None or config_overrides):
        raise ValueError("store only holds runs of the default checkpoint and settings: pass store=None")
    if only_stored and store is None:
        raise ValueError("only_stored needs a store (e.g. RUNS_DIR)")
    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    sizes = sorted(sft_sizes)
    base, tokenizer, world = load_pretrained(checkpoint, device=device)
    out = {"pretrained": make_evaluator(tokenizer, world, n_per_task, mix)(base), "runs": {}}
    keys = [(m, lrs[m], s) for s in seeds for m in methods]  # (method, lr, seed): a run key's order
    # one_run's settings, the same for every run; in a pool one CPU thread each, and no inner progress bars
    # (they would interleave: one bar over the finished runs instead)
    settings = dict(n_per_task=n_per_task, checkpoint=checkpoint, device=device, progress=progress and workers == 1,
                    threads=1 if workers > 1 else None, config_overrides=config_overrides, mix=mix)
    run = one_run if store is None else partial(_stored_run, root=store)
    if only_stored:
        keys = [(m, lr, s) for m, lr, s in keys
                if runs.load(RunKey(mix, EXTRA_RUNS.get(m, (m,))[0], lr, s), sizes, store, n_per_task)]

    def report(key, evals):
        m, lr, s = key
        out["runs"].setdefault(m, {})[s] = evals
        f = evals[sizes[-1]]
        if progress:
            tqdm.write(f"seed {s} {m:<24} lr {lr:.0e}  knowledge {f['knowledge']:.3f}  "
                       f"downstream {f['downstream']:.3f}  ({f['seconds']:.0f} s)")

    if workers == 1:
        for key in keys:
            report(key, run(*key, sizes, **settings))
    else:
        done = pool_results([(key, run, (*key, sizes), settings) for key in keys], workers)
        for key, evals in tqdm(done, total=len(keys), desc="fine-tuning runs", disable=not progress):
            report(key, evals)
    out["runs"] = {m: dict(sorted(out["runs"][m].items())) for m in methods if m in out["runs"]}  # fixed order
    return out


def summarize(raw: dict, sft_sizes, seeds, lrs) -> dict:
    """Means and sample standard deviations over seeds (ddof = 1; 0.0 where only one seed ran), in the JSON schema
    documented in the README."""
    sizes = sorted(sft_sizes)
    res = {"sft_sizes": sizes, "seeds": list(seeds), "lr": {m: lrs[m] for m in raw["runs"]}}
    keys = ("knowledge", "knowledge_instruction", "downstream") + (("new_content",) if "new_content" in
                                                                   raw["pretrained"] else ())
    for key in keys:
        res[key] = {"pretrained": raw["pretrained"][key]}
        res[key + "_std"] = {}
    res["downstream_by_task"] = {"pretrained": raw["pretrained"]["downstream_by_task"]}
    res["weight_change"], res["router_group_weight"], res["per_seed"], res["seeds_of"] = {}, {}, {}, {}
    for method, by_seed in raw["runs"].items():
        seeds_of = [s for s in seeds if s in by_seed]  # all of them, unless the store was read with only_stored
        res["seeds_of"][method] = seeds_of
        for key in keys:
            arr = np.array([[by_seed[s][n][key] for n in sizes] for s in seeds_of])  # (seeds, sizes)
            res[key][method] = arr.mean(0).round(4).tolist()
            res[key + "_std"][method] = (arr.std(0, ddof=1) if len(arr) > 1 else 0 * arr[0]).round(4).tolist()
            res["per_seed"].setdefault(method, {})[key] = arr.round(4).tolist()
        finals = [by_seed[s][sizes[-1]] for s in seeds_of]
        res["downstream_by_task"][method] = {t: round(float(np.mean([f["downstream_by_task"][t] for f in finals])), 4)
                                             for t in finals[0]["downstream_by_task"]}
        res["weight_change"][method] = round(float(np.mean([f["weight_change"] for f in finals])), 4)
        if "router_group_weight" in finals[0]:
            res["router_group_weight"][method] = {
                k: round(float(np.mean([f["router_group_weight"][k] for f in finals])), 4)
                for k in ("knowledge_samples", "task_samples")}
    return res


def format_table(res: dict) -> str:
    """A plain-text table: knowledge and downstream accuracy per method and SFT size (mean ± sample std over
    seeds)."""
    sizes = res["sft_sizes"]
    head = f"{'method':<24}{'lr':>8}" + "".join(f"{'know@' + str(n):>16}" for n in sizes) + \
        f"{'tasks@' + str(sizes[-1]):>16}{'know(instr)':>13}"
    lines = [head, "-" * len(head),
             f"{'pretrained':<24}{'':>8}" + f"{res['knowledge']['pretrained']:>16.3f}" + " " * 16 * (len(sizes) - 1) +
             f"{res['downstream']['pretrained']:>16.3f}{res['knowledge_instruction']['pretrained']:>13.3f}"]
    for m in res["lr"]:
        k, ks = res["knowledge"][m], res["knowledge_std"][m]
        d, ds = res["downstream"][m], res["downstream_std"][m]
        lines.append(f"{m:<24}{res['lr'][m]:>8.0e}" + "".join(f"{a:>10.3f} ±{s:.3f}" for a, s in zip(k, ks)) +
                     f"{d[-1]:>10.3f} ±{ds[-1]:.3f}{res['knowledge_instruction'][m][-1]:>13.3f}")
    return "\n".join(lines)


def plot_curves(res: dict, key: str, ax, methods=None, title=None):
    """One metric against SFT size on ``ax``, one line per method in its colour (``report.METHOD_COLORS``; error
    bars: sample std over seeds), pretrained dashed."""
    from .report import color_of
    for m in methods or res["lr"]:
        ax.errorbar(res["sft_sizes"], res[key][m], yerr=res[key + "_std"][m], marker="o", capsize=3,
                    label=f"{m} (lr {res['lr'][m]:g})", color=color_of(m))
    ax.axhline(res[key]["pretrained"], color="black", ls="--", lw=1, label="pretrained")
    ax.set(xscale="log", xlabel="SFT examples", ylabel="exact-match accuracy", title=title, ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)


def plot_results(res: dict, path=None):
    """Knowledge and downstream accuracy against SFT size, one line per method (error bars: sample std over
    seeds)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), facecolor="white")
    plot_curves(res, "knowledge", axes[0], title="world knowledge (held-out closed-book QA)")
    plot_curves(res, "downstream", axes[1], title="downstream tasks")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120, facecolor="white")
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], prog="python -m minimal_loramoe.lab.reproduce")
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="experiment size (default: cpu)")
    p.add_argument("--mix", choices=MIXES, default="easy", help="SFT mix (default: easy; cipher adds new content)")
    p.add_argument("--methods", nargs="+", choices=RUN_LABELS,
                   help="override the scale's methods (cpu: full_ft lora loramoe; full and gpu: all but the SLIM ones)")
    p.add_argument("--seeds", nargs="+", type=int, help="override the scale's seeds")
    p.add_argument("--json", help="write the numbers to this JSON file")
    p.add_argument("--figure", default="forgetting.png", help="where to save the figure (default: forgetting.png)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--workers", type=int, default=3 if not torch.cuda.is_available() else 1,
                   help="fine-tunings run side by side, one CPU thread each (default: 3 on CPU -- on 2 cores three "
                        "runs then end together instead of leaving a core idle for the last one --, 1 on GPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads of the main process (default: torch's choice)")
    p.add_argument("--only-stored", action="store_true",
                   help="--scale full: summarise the runs already in the committed run store, run nothing")
    p.add_argument("--store", action="store_true", help="--scale full: " + resources.STORE_HELP +
                   " (its run store; default: runs/store; --only-stored reads the committed one)")
    args = p.parse_args(argv)
    if args.only_stored and not SCALES[args.scale]["store"]:
        p.error("--only-stored needs a scale that uses the run store (full)")
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = SCALES[args.scale]
    seeds = args.seeds or scale["seeds"]
    methods = args.methods or list(scale["methods"] or DEFAULT_RUNS)
    lrs = tuned_learning_rates()
    t0 = time.time()
    raw = run_experiment(scale["sft_sizes"], seeds, methods, lrs, scale["n_per_task"], device=args.device,
                         workers=1 if args.only_stored else min(args.workers, len(seeds) * len(methods)), mix=args.mix,
                         store=(RUNS_DIR if args.store or args.only_stored else resources.DEFAULT_OUT_DIR / "store")
                         if scale["store"] else None, only_stored=args.only_stored)
    res = summarize(raw, scale["sft_sizes"], seeds, lrs)
    res["scale"], res["mix"], res["seconds"] = args.scale, args.mix, round(time.time() - t0, 1)
    print(format_table(res))
    print("router weight on the knowledge group (experts n < E/2), by sample type:")
    for m, g in res["router_group_weight"].items():
        print(f"  {m:<24} knowledge samples {g['knowledge_samples']:.3f}   task samples {g['task_samples']:.3f}")
    plot_results(res, args.figure)
    print(f"figure saved to {args.figure}; total {res['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
        print(f"numbers written to {args.json}")
    return res


if __name__ == "__main__":
    main()
