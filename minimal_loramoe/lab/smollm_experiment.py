"""Chapter 10's experiment on SmolLM2-135M: one resumable command that writes the JSON the chapter reads.

The contract. This module is the *experiment*, not the model: the recipes (what every point of one results file
shares), the learning-rate grids, one point (:func:`run_point`: fine-tune a copy, evaluate along the way), the
results files (:func:`run_experiment`, resumable, one point per method, learning rate and seed;
:func:`merge_results`), the readers and figures of chapter 10, and the command. Everything it knows of the model
comes from :mod:`minimal_loramoe.lab.smollm` (loading, probe, chat, generation, scoring, the typed mixes)::

    python -m minimal_loramoe.lab.smollm_experiment run --methods full_ft lora loramoe --steps 160   # -> runs/smollm2.json
    python -m minimal_loramoe.lab.smollm_experiment merge a.json b.json   # the files of runs made in parallel
    python -m minimal_loramoe.lab.smollm_experiment run --mix codes --steps 1000 ...   # new content: smollm2_codes.json
    python -m minimal_loramoe.lab.smollm_experiment show   # the table of the committed file
    python -m minimal_loramoe.lab.smollm_experiment known-short --out a.json   # a file written before base["known_short"]

Both write ``runs/smollm2.json`` by default; ``--store`` writes the committed
``minimal_loramoe/data/results/smollm2.json`` the chapter reads (maintainers).

**The template for adding a new model.** Another model is two laboratory modules like these two, in
``minimal_loramoe/lab/`` (the laboratory's folder, ``tests/test_floors.py``), each with its test file
(``tests/test_<module>.py``):

1. ``<model>.py``, the model (as :mod:`minimal_loramoe.lab.smollm`): ``load_<model>()`` returning ``(model,
   tokenizer)`` offline (the tokenizer padding on the left, for batched generation); its chat rendering,
   ``chat_prompt`` = ``train.render_chat`` with the model's system message, and its batch encoder
   ``encode_chat`` = ``train.chat_encoder(system)`` (check that ``tokenizer.eos_token`` ends a turn); greedy
   ``generate_answers`` and the scoring (``evaluate_knowledge``, ``evaluate_task``); ``prompt_mean_gates`` on
   ``routing.mean_gates_by_type``; and the data it is probed and fine-tuned with. For a chat model the probe, the
   tasks and the mixes of :mod:`minimal_loramoe.lab.smollm` can be imported as they are (they are text); only facts
   the new model knows make a fair probe, so check which probe questions its base model answers -- plainly and in
   the short format fine-tuning teaches (``short_answer_shots``; :func:`known_short`, :func:`restrict_known`).
2. ``<model>_experiment.py``, the experiment (this module): the recipes and grids for the model's scale
   (``RECIPE``, ``REVERSAL_LR_GRID``; full fine-tuning of a larger model needs lower rates), ``prepare`` (what stays
   frozen), ``run_point``, ``run_experiment`` (the resumable loop over points, with the new model's loader),
   the results file names (``RESULTS_FILE``, under ``resources.RESULTS_DIR``) and ``main``. The rest of this
   module reads results files, not a model -- ``merge_results``, ``results_table``, ``grid_points``, ``curve``,
   the tables and the plots -- so a new experiment imports those from here and writes only what differs. A
   method of ``methods.TABLE`` runs here once it is in ``RUN_METHODS`` (the default grid's methods and gated LoRA).
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from . import fronts, resources
from .report import LEARNED
from ..finetune import FinetuneConfig, prepare_model, sft_loop
from ..methods import get_method
from .smollm import (CODE_PARAPHRASE, SFT_MIXES, chat_dataset, codes_mix, codes_task, data_file, encode_chat,
                     evaluate_knowledge, evaluate_task, load_probe, load_registry, load_smollm2, prompt_mean_gates,
                     short_answer_shots,
                     sft_mix, task_test_set)
from ..utils import set_seed

RESULTS_FILE = resources.RESULTS_DIR / "smollm2.json"
# A small grid per method, bracketing the usual rates: full fine-tuning moves every weight and needs rates ~10x
# smaller than the adapters (chapter 8's fronts bracket the tiny model the same way).
REVERSAL_LR_GRID = {"full_ft": (1e-5, 3e-5, 1e-4), "lora": (2e-4, 1e-3), "loramoe": (2e-4, 1e-3)}
EXPERIMENT_METHODS = tuple(REVERSAL_LR_GRID)
# What every point of one results file shares. LoRA gets rank E*r = 24, as many adapter weights as the experts;
# loramoe is LoRAMoE with the corrected localized balancing constraint (methods.TABLE).
RECIPE = dict(batch_size=8, knowledge_fraction=0.5, warmup_steps=10, schedule="constant", n_test=100,
              max_new_tokens=12, num_experts=6, rank=4, alpha=32, lbc_delta=0.1, lbc_beta=0.1,
              frozen="full_ft keeps the tied embedding matrix frozen (CPU time)")
# What ``run`` accepts: the three methods of chapter 10, and gated LoRA -- the tiny world's control (one LoRA of
# rank E*r times a learned per-token gate: a router without experts).
RUN_METHODS = EXPERIMENT_METHODS + ("gated_lora",)

# The new-content mix (``--mix codes``, issue #24): its own results file, recipe and grid. World-knowledge QA as
# in the reversal mix (type 1), and the registry codes of the first ``n_names`` invented names (type 0; see
# :func:`codes_task` for what new-content accuracy measures). The grid brackets each method around what learned
# the codes in a prototype (full FT 3e-5, LoRAMoE 1e-3: ~0.97 of the codes after 400 steps), half a decade apart.
CODES_RESULTS_FILE = RESULTS_FILE.with_name("smollm2_codes.json")
CODES_RECIPE = {**{k: v for k, v in RECIPE.items() if k != "n_test"}, "mix": "codes", "n_names": 100}
# The grids grew downward from the first plan (full FT 1e-5, adapters 3e-4) while the best rate was the lowest run:
# a rate too low to learn the codes brackets it.
CODES_LR_GRID = {"full_ft": (3e-6, 1e-5, 3e-5, 1e-4), "lora": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3),
                 "loramoe": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3), "gated_lora": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)}
RECIPES = {"reversal": RECIPE, "codes": CODES_RECIPE}
RESULTS_FILES = {"reversal": RESULTS_FILE, "codes": CODES_RESULTS_FILE}
LR_GRIDS = {"reversal": REVERSAL_LR_GRID, "codes": CODES_LR_GRID}
# What each mix measures of its type-0 task (one accuracy per name, in every evaluation and point).
MEASURES = {"reversal": ("task_accuracy",), "codes": ("new_content", "new_content_paraphrase")}


def mix_of(recipe: dict) -> str:
    """The mix a recipe trains on (chapter 10's recipe, written before there were two, is the reversal mix)."""
    return recipe.get("mix", "reversal")


def prepare(base, method: str, lr: float, seed: int, steps: int, recipe: dict = RECIPE):
    """A fresh copy of ``base`` set up for ``method`` and the ``FinetuneConfig`` to train it with.

    Full fine-tuning trains every weight except the embedding matrix, which SmolLM2 ties to its output layer:
    28 M of its 134.5 M parameters, whose AdamW update costs CPU time on every step (79 % of the weights still train).
    """
    if method not in RUN_METHODS:
        raise ValueError(f"method must be one of {RUN_METHODS}, got {method!r}")
    r = recipe
    config = FinetuneConfig(method=method, lr=lr, batch_size=r["batch_size"], steps=steps, seed=seed,
                            warmup_steps=r["warmup_steps"], schedule=r["schedule"], num_experts=r["num_experts"],
                            rank=r["rank"], alpha=r["alpha"], lbc_delta=r["lbc_delta"], lbc_beta=r["lbc_beta"])
    model = prepare_model(base, config)
    if get_method(method).adapter is None:  # full fine-tuning
        model.get_input_embeddings().requires_grad_(False)
    return model, config


def training_samples(recipe: dict, n: int, seed: int) -> list[dict]:
    """The ``n`` typed training samples of a run of ``recipe``'s mix with ``seed``."""
    if mix_of(recipe) == "codes":
        return codes_mix(n, recipe["knowledge_fraction"], seed=seed, registry=load_registry()[:recipe["n_names"]])
    return sft_mix(n, recipe["knowledge_fraction"], seed=seed)


def type0_tests(recipe: dict, trained=()) -> dict:
    """``{measure: samples}``: what an evaluation asks of the type-0 task of ``recipe``'s mix (see ``MEASURES``).

    Reversal: ``n_test`` test prompts, none of the questions in ``trained``. Codes: every name trained on, with the
    training question and with the paraphrase (:func:`codes_task`)."""
    if mix_of(recipe) == "codes":
        registry = load_registry()[:recipe["n_names"]]
        return {"new_content": codes_task(registry), "new_content_paraphrase": codes_task(registry, CODE_PARAPHRASE)}
    return {"task_accuracy": task_test_set(recipe["n_test"], exclude=trained)}


def run_point(base, tokenizer, method: str, lr: float, seed: int, steps: int, known: list[dict],
              eval_steps=(), recipe: dict = RECIPE, progress: bool = False, short_probe: bool = False):
    """Fine-tune one copy of ``base`` on the typed mix and evaluate it: ``(model, point)``.

    ``point`` holds, after every step count of ``eval_steps`` and after ``steps``: the questions of ``known`` (those
    the base model answered correctly) still answered correctly (``kept``: one 0/1 per question) and what the mix
    measures of its task (``MEASURES``): the task accuracy on ``recipe["n_test"]`` test prompts (reversal), or the
    new-content accuracy with the training question and with the paraphrase (codes); plus the training seconds
    (evaluation excluded) and the last losses. For LoRAMoE the last evaluation also holds the mean gate weight of
    the knowledge group (experts < E/2, the group the balancing constraint gives the type-1 samples) on the known
    questions and on the task prompts (codes: the code questions). ``short_probe``: every evaluation also asks
    the known questions in the short format (after :func:`smollm.short_answer_shots`, as :func:`known_short` asks
    the base model): ``kept_short`` (one 0/1 per question) and ``knowledge_kept_short``; the point says
    ``"short_probe": true``.
    """
    r = recipe
    checkpoints = sorted({*eval_steps, steps})
    if checkpoints[0] < 1 or checkpoints[-1] > steps:
        raise ValueError(f"eval_steps must lie in [1, steps={steps}], got {list(eval_steps)}")
    set_seed(seed)
    mix = training_samples(r, steps * r["batch_size"], seed)
    measures = type0_tests(r, trained=[s["question"] for s in mix])
    tests = next(iter(measures.values()))  # the task prompts (codes: the training question)
    model, config = prepare(base, method, lr, seed, steps, r)
    evals, eval_seconds = {}, [0.0]

    def evaluate(m, n_seen):
        t = time.time()
        kept = evaluate_knowledge(m, tokenizer, known, max_new_tokens=r["max_new_tokens"])
        evals[n_seen // r["batch_size"]] = e = {"knowledge_kept": kept.n_correct,
                                                **{k: evaluate_task(m, tokenizer, s) for k, s in measures.items()},
                                                "kept": [int(c) for c in kept.correct]}
        if short_probe:
            short = evaluate_knowledge(m, tokenizer, known, max_new_tokens=r["max_new_tokens"],
                                       shots=short_answer_shots())
            e.update(knowledge_kept_short=short.n_correct, kept_short=[int(c) for c in short.correct])
        eval_seconds[0] += time.time() - t

    t0 = time.time()
    history = sft_loop(model, tokenizer, chat_dataset(mix), config, encode=encode_chat, progress=progress,
                       eval_every=[s * r["batch_size"] for s in checkpoints], eval_fn=evaluate)
    seconds = time.time() - t0 - eval_seconds[0]
    last = evals[steps]
    if method == "loramoe":  # how much gate weight the knowledge group (experts < E/2) gets, per kind of prompt
        half = r["num_experts"] // 2
        last["knowledge_group"] = {kind: round(prompt_mean_gates(model, tokenizer, qs)[:, :half].sum(-1).mean().item(),
                                               4)
                                   for kind, qs in (("knowledge", [p["question"] for p in known]),
                                                    ("task", [s["question"] for s in tests]))}
    point = {"method": method, "lr": lr, "seed": seed, "steps": steps, "n_known": len(known),
             "knowledge_kept": last["knowledge_kept"], **{k: last[k] for k in measures},
             "train_seconds": round(seconds, 1), "s_per_step": round(seconds / steps, 3),
             "eval_seconds": round(eval_seconds[0], 1),
             **({"n_names": len(tests)} if mix_of(r) == "codes" else {"n_test": len(tests)}),
             "loss_last20": sum(history["loss"][-20:]) / len(history["loss"][-20:]),
             "lbc_last20": sum(history["lbc"][-20:]) / len(history["lbc"][-20:]) if history["lbc"] else None,
             "evals": {str(k): v for k, v in sorted(evals.items())},
             **({"short_probe": True} if short_probe else {})}
    return model, point


def load_results(path=None, mix: str = "reversal") -> dict:
    """The committed results of the long run (``minimal_loramoe/data/results/smollm2.json``; ``mix="codes"``:
    ``smollm2_codes.json``), as :func:`run_experiment` writes them."""
    if path is None:
        path = data_file(RESULTS_FILES[mix].name, RESULTS_FILES[mix].parent)
    return json.loads(Path(path).read_text(encoding="utf-8"))


def point_key(point: dict) -> tuple:
    """What names a point of a results file: ``(method, lr, seed, steps)``; a file holds each key once."""
    return point["method"], point["lr"], point["seed"], point["steps"]


def _write(path: Path, results: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")  # a killed run never leaves a half-written file
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_experiment(points, steps: int, out, eval_steps=(), recipe: dict = RECIPE, progress: bool = True,
                   verbose: bool = True, short_probe: bool = False) -> dict:
    """Run every ``(method, lr, seed)`` of ``points`` at ``steps`` steps that ``out`` does not hold yet.

    Resumable: the file is rewritten after each point, so a killed run keeps what it finished, and a rerun skips
    the points already there (same method, lr, seed and steps). All points of one file share ``recipe`` and the
    base model's evaluation (which probe questions it knows): a file written with another recipe is refused, so
    the two mixes (``RECIPES``) can never share a file. ``short_probe``: see :func:`run_point`.
    """
    out = Path(out)
    results = load_results(out) if out.is_file() else {}
    if results and results["recipe"] != recipe:
        raise ValueError(f"out: {out} was written with another recipe ({results['recipe']}); use another file")
    points = list(points)
    plain = [point_key(p) for p in results.get("points", []) if short_probe and not p.get("short_probe")
             and p["steps"] == steps and point_key(p)[:3] in points]
    if plain:  # they would be skipped, without the short answers asked for
        raise ValueError(f"out: {out} already holds {plain} evaluated without short_probe; use another file")
    base, tok = load_smollm2()
    probe = load_probe()
    if "base" not in results:
        before = evaluate_knowledge(base, tok, probe, max_new_tokens=recipe["max_new_tokens"])
        results = {"recipe": recipe, "base": {
            "n_probe": len(probe), "known": [i for i, ok in enumerate(before.correct) if ok],
            "known_short": known_short(base, tok, probe, recipe),
            **{k: evaluate_task(base, tok, tests) for k, tests in type0_tests(recipe).items()}},
            "machine": {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__},
            "points": []}
        out.parent.mkdir(parents=True, exist_ok=True)
        _write(out, results)
    known = [probe[i] for i in results["base"]["known"]]
    done = {point_key(p) for p in results["points"]}
    for method, lr, seed in points:
        if (method, lr, seed, steps) in done:
            continue
        _, point = run_point(base, tok, method, lr, seed, steps, known, eval_steps, recipe, progress, short_probe)
        results["points"].append(point)
        _write(out, results)
        if verbose:
            learned = ", ".join(f"{k} {point[k]:.2f}" for k in MEASURES[mix_of(recipe)])
            print(f"{method} lr {lr:g} seed {seed}: knowledge kept {point['knowledge_kept']}/{len(known)}, "
                  f"{learned}, {point['s_per_step']:.2f} s/step", flush=True)
    return results


def known_short(base, tokenizer, probe: list[dict], recipe: dict = RECIPE) -> list[int]:
    """The indices of the ``probe`` questions ``base`` answers in the short format fine-tuning teaches: asked after
    the five training pairs of :func:`smollm.short_answer_shots` as earlier chat turns, greedy, scored like the
    probe. A results file stores them as ``base["known_short"]`` beside ``base["known"]`` (asked plainly)."""
    result = evaluate_knowledge(base, tokenizer, probe, max_new_tokens=recipe["max_new_tokens"],
                                shots=short_answer_shots())
    return [i for i, ok in enumerate(result.correct) if ok]


def add_known_short(path) -> dict:
    """Evaluate the base model once in the short format (:func:`known_short`) and store it in the results file
    ``path`` (``base["known_short"]``; a file written before it existed). Files that hold it are left as they are.
    Returns the results."""
    results = load_results(path)
    if "known_short" not in results["base"]:
        base, tok = load_smollm2()
        results["base"]["known_short"] = known_short(base, tok, load_probe(), results["recipe"])
        _write(Path(path), results)
    return results


def restrict_known(results: dict, questions=None) -> dict:
    """A copy of ``results`` whose knowledge is scored on the known probe questions in ``questions`` only (probe
    indices; default: those the base model answers both plainly and in the short format, ``base["known"]`` and
    ``base["known_short"]``): ``base["known"]``, each point's ``n_known`` and ``knowledge_kept`` and every
    evaluation's ``kept`` and ``knowledge_kept`` (and ``kept_short``, ``knowledge_kept_short``) follow. Nothing
    is re-run: every evaluation stores one 0/1 per known question. ``ValueError`` if ``questions`` holds one the base model did not know, or the file has no
    ``known_short`` (:func:`add_known_short`)."""
    known = results["base"]["known"]
    if questions is None:
        if "known_short" not in results["base"]:
            raise ValueError("results: no base['known_short'] in this file; add it with add_known_short(path)")
        questions = set(results["base"]["known_short"]) & set(known)
    questions = set(questions)
    if not questions <= set(known):
        raise ValueError(f"questions: {sorted(questions - set(known))} are not known to the base model")
    keep = [j for j, i in enumerate(known) if i in questions]

    def rescore(e: dict) -> dict:
        out = dict(e)
        for kept, n in (("kept", "knowledge_kept"), ("kept_short", "knowledge_kept_short")):  # short: short_probe
            if kept in e:
                out[kept] = [e[kept][j] for j in keep]
                out[n] = sum(out[kept])
        return out

    points = []
    for p in results["points"]:
        evals = {s: rescore(e) for s, e in p["evals"].items()}
        points.append({**p, "n_known": len(keep), "knowledge_kept": evals[str(p["steps"])]["knowledge_kept"],
                       "evals": evals})
    return {**results, "base": {**results["base"], "known": [known[j] for j in keep]}, "points": points}


def merge_results(paths, out) -> dict:
    """Merge results files written by parallel runs (one ``--out`` per process) into ``out``; return the merge.

    ``out`` itself, if it exists, comes first. Every file must share the recipe and the base model's evaluation
    (the same known questions; an evaluation of the base only one file holds is kept), or the merge is refused:
    their points would not be comparable. A point found in several files (same method, lr, seed and steps) is kept
    once, from the first file that holds it.
    """
    out = Path(out)
    sources = ([out] if out.is_file() else []) + [Path(p) for p in paths]
    if not sources:
        raise ValueError("paths: give at least one results file to merge")
    merged, seen = None, set()
    for path in sources:
        res = load_results(path)
        if merged is None:
            merged = {**res, "points": []}
        elif res["recipe"] != merged["recipe"] or any(res["base"][k] != merged["base"][k]
                                                      for k in set(res["base"]) & set(merged["base"])):
            raise ValueError(f"paths: {path} was written with another recipe or base evaluation than {sources[0]}")
        else:  # a file written before an evaluation of the base existed (known_short) lacks only that one
            merged["base"] = {**res["base"], **merged["base"]}
        for point in res["points"]:
            if point_key(point) not in seen:
                seen.add(point_key(point))
                merged["points"].append(point)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, merged)
    return merged


def results_table(results: dict) -> str:
    """The points of a results file as a text table, one line per (method, lr, seed, steps); the columns of what
    was learned follow the file's mix (task accuracy, or new-content accuracy and its paraphrase variant)."""
    heads = {"task_accuracy": "task acc.", "new_content": "new content", "new_content_paraphrase": "paraphrase"}
    measures = [(k, max(9, len(heads[k]))) for k in MEASURES[mix_of(results["recipe"])]]
    w = max([8] + [len(p["method"]) for p in results["points"]])
    lines = [f"{'method':<{w}} {'lr':>7} {'seed':>4} {'steps':>5}  {'knowledge kept':>14}  "
             + "".join(f"{heads[k]:>{n}}  " for k, n in measures) + f"{'s/step':>6}"]
    for p in sorted(results["points"],
                    key=lambda p: (RUN_METHODS.index(p["method"]), p["lr"], p["steps"], p["seed"])):
        lines.append(f"{p['method']:<{w}} {p['lr']:>7.0e} {p['seed']:>4} {p['steps']:>5}  "
                     f"{p['knowledge_kept']:>4}/{p['n_known']:<3} {p['knowledge_kept'] / p['n_known']:>5.2f}  "
                     + "".join(f"{p[k]:>{n}.2f}  " for k, n in measures) + f"{p['s_per_step']:>6.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- reading a results file (chapter 10's figures)

METHOD_LABELS = {"full_ft": "full fine-tuning", "lora": "LoRA (rank 24)",
                 "loramoe": "LoRAMoE (6 x rank 4) + corrected LBC", "gated_lora": "gated LoRA"}
# The accuracy each mix's figures and tables put beside the knowledge kept (the first of ``MEASURES[mix]``).
MEASURE_LABELS = {"task_accuracy": "word reversal accuracy (test prompts)",
                  "new_content": "new-content accuracy (codes, training question)",
                  "new_content_paraphrase": "new-content accuracy (codes, paraphrased question)"}


def learned_measure(results: dict, measure: str | None = None) -> str:
    """What the runs of a results file learn, as the key of an evaluation: ``"task_accuracy"`` (reversal mix) or
    ``"new_content"`` (codes mix); or ``measure`` when given, which must be one of the mix's ``MEASURES``
    (``ValueError`` otherwise)."""
    mix = mix_of(results["recipe"])
    if measure is None:
        return MEASURES[mix][0]
    if measure not in MEASURES[mix]:
        raise ValueError(f"measure must be one of {MEASURES[mix]} for the {mix} mix, got {measure!r}")
    return measure


def grid_points(results: dict, steps: int, seed: int = 0) -> dict:
    """The points of ``results`` run for ``steps`` steps with ``seed``, as ``{(method, lr): point}``."""
    return {(p["method"], p["lr"]): p for p in results["points"] if p["steps"] == steps and p["seed"] == seed}


def eval_steps(results: dict, steps: int) -> list[int]:
    """The steps at which the runs of ``steps`` steps in ``results`` were evaluated, ascending (``steps`` last)."""
    return sorted({int(s) for p in results["points"] if p["steps"] == steps for s in p["evals"]})


def curve(results: dict, method: str, lr: float, key: str, steps: int) -> torch.Tensor:
    """One measure (``key`` of an evaluation: ``"knowledge_kept"`` in facts, ``"task_accuracy"``, ...) of every
    seed's run of ``(method, lr)`` for ``steps`` steps, as a ``(seeds, eval_steps)`` tensor, rows by seed and
    columns in the order of :func:`eval_steps` (float64). ``ValueError`` if there is no such run."""
    runs = sorted((p for p in results["points"] if (p["method"], p["lr"], p["steps"]) == (method, lr, steps)),
                  key=lambda p: p["seed"])
    if not runs:
        raise ValueError(f"no run of {method} at lr {lr:g} for {steps} steps in the results")
    return torch.tensor([[float(p["evals"][str(s)][key]) for s in eval_steps(results, steps)] for p in runs],
                        dtype=torch.float64)


def as_fronts(results: dict, steps: int, measure: str | None = None) -> dict:
    """The runs of ``steps`` steps in ``results`` in the tiny world's fronts schema (:mod:`fronts`), so that
    :func:`fronts.front_point`, :func:`fronts.compare` and :func:`fronts.plot_fronts` apply the book's one rule:
    ``{"mix": "smollm2_<mix>", "sft_sizes", "largest" (samples), "tradeoff": {method: {f"{lr:g}": point}}}``, one
    point per (method, lr) over its seeds, with ``knowledge`` the share of the known probe questions still answered
    and the mix's learning measure (``report.LEARNED``): ``downstream`` = the task accuracy of the reversal mix,
    ``new_content`` = the new-content accuracy of the codes mix. A point's curve covers the evaluations all its
    seeds share. ``measure``: another of the mix's ``MEASURES`` to read as what was learned (the codes mix:
    ``"new_content_paraphrase"``, the codes asked with a question never trained on); default
    :func:`learned_measure`."""
    mix, bs = mix_of(results["recipe"]), results["recipe"]["batch_size"]
    measure, learned = learned_measure(results, measure), LEARNED[f"smollm2_{mix}"]
    by_point = {}
    for p in results["points"]:
        if p["steps"] == steps:
            evals = {str(int(s) * bs): {"knowledge": e["knowledge_kept"] / p["n_known"], learned: e[measure]}
                     for s, e in p["evals"].items()}
            by_point.setdefault((p["method"], p["lr"]), []).append({"seed": p["seed"], "evals": evals})
    out = {"mix": f"smollm2_{mix}", "sft_sizes": [s * bs for s in eval_steps(results, steps)], "largest": steps * bs,
           "tradeoff": {}}
    for method, lr in sorted(by_point, key=lambda k: (RUN_METHODS.index(k[0]), k[1])):
        runs = by_point[(method, lr)]
        shared = sorted(set.intersection(*({int(n) for n in r["evals"]} for r in runs)))
        out["tradeoff"].setdefault(method, {})[f"{lr:g}"] = fronts.seed_mean_point(runs, shared)
    return out


def _runs_of(results: dict, steps: int) -> list[tuple]:
    """The ``(method, lr)`` pairs run for ``steps`` steps: methods in ``RUN_METHODS`` order, high rate first."""
    pairs = {(p["method"], p["lr"]) for p in results["points"] if p["steps"] == steps}
    return sorted(pairs, key=lambda k: (RUN_METHODS.index(k[0]), -k[1]))


def curves_table(results: dict, steps: int) -> str:
    """Text table of the runs of ``steps`` steps, one line per ``(method, lr)``: at each evaluation, the facts
    kept (mean over seeds, then each seed's) and the mean of what the mix learns (:func:`learned_measure`: task
    accuracy or new-content accuracy); the header counts samples seen."""
    bs, measure = results["recipe"]["batch_size"], learned_measure(results)
    runs = _runs_of(results, steps)
    w = max([8] + [len(m) + 1 for m, _ in runs])
    lines = [f"{'method':<{w}} {'lr':>6}  " + "".join(f"{s * bs:>6,} samples{'':>7}" for s in eval_steps(results, steps))]
    for m, lr in runs:
        k, t = curve(results, m, lr, "knowledge_kept", steps), curve(results, m, lr, measure, steps)
        lines.append(f"{m:<{w}} {lr:>6.0e}  " + "".join(
            f"{k[:, j].mean():5.1f} ({'/'.join(f'{v:.0f}' for v in k[:, j]):<5}) {t[:, j].mean():4.2f}   "
            for j in range(k.shape[1])))
    return "\n".join(lines)


def plot_grid(results: dict, steps: int, seed: int = 0):
    """Figure of a learning-rate grid: for each ``(method, lr)`` run of ``steps`` steps with ``seed``, what the mix
    learns (x, :func:`learned_measure`) against the share of the known facts kept (y) after the last step, labelled
    with the rate, with an arrow from the run's first evaluation. Colours from ``report.color_of``. Returns the
    matplotlib figure."""
    import matplotlib.pyplot as plt
    from .report import color_of
    grid, n_known = grid_points(results, steps, seed), len(results["base"]["known"])
    measure = learned_measure(results)
    first = str(eval_steps(results, steps)[0])
    fig, ax = plt.subplots(figsize=(7, 4.2), facecolor="white")
    labelled = set()
    for (method, lr), p in sorted(grid.items()):
        a, b = p["evals"][first], p["evals"][str(steps)]
        xy = (b[measure], b["knowledge_kept"] / n_known)
        ax.annotate("", xy=xy, xytext=(a[measure], a["knowledge_kept"] / n_known),
                    arrowprops=dict(arrowstyle="->", color=color_of(method), lw=1, alpha=0.6))
        ax.scatter(*xy, color=color_of(method), s=40, zorder=3,
                   label=None if method in labelled else METHOD_LABELS.get(method, method))
        labelled.add(method)
        ax.annotate(f"{lr:.0e}", xy, fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set(xlabel=MEASURE_LABELS[measure], ylabel=f"knowledge kept (of {n_known} known facts)",
           xlim=(-0.03, 1.03), ylim=(0, 1.05), title=f"SmolLM2-135M, after {first} (arrow tail) and {steps} steps")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(results: dict, steps: int, main_lrs: dict):
    """Figure of the runs of ``steps`` steps against samples seen (0: the base model): left the share of the known
    facts kept, right what the mix learns (:func:`learned_measure`). At ``main_lrs[method]`` one thin line per seed
    and a thick mean; at any other rate a dashed mean. Colours from ``report.color_of``. Returns the figure."""
    import matplotlib.pyplot as plt
    from .report import color_of
    n_known, bs = len(results["base"]["known"]), results["recipe"]["batch_size"]
    measure = learned_measure(results)
    x = [0] + [s * bs for s in eval_steps(results, steps)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), facecolor="white")
    for m, lr in _runs_of(results, steps):
        main = lr == main_lrs.get(m)
        for ax, key, start, scale in ((ax1, "knowledge_kept", 1.0, n_known),
                                      (ax2, measure, results["base"][measure], 1)):
            c = curve(results, m, lr, key, steps) / scale
            for row in c if main else ():
                ax.plot(x, [start] + row.tolist(), color=color_of(m), lw=0.8, alpha=0.5, marker="o", ms=3)
            ax.plot(x, [start] + c.mean(0).tolist(), color=color_of(m), lw=2.2 if main else 1.2,
                    ls="-" if main else "--", label=f"{METHOD_LABELS.get(m, m)}, lr {lr:.0e}"
                    + ("" if main else f" ({len(c)} seed{'s' if len(c) > 1 else ''})"))
    ax1.set(xlabel="fine-tuning samples seen", ylabel=f"knowledge kept (of {n_known} known facts)", ylim=(0, 1.05),
            title="world knowledge")
    ax2.set(xlabel="fine-tuning samples seen", ylabel=MEASURE_LABELS[measure], ylim=(-0.03, 1.03),
            title={"task_accuracy": "the new task", "new_content": "the new content"}[measure])
    ax1.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    return fig


def plot_paths(results: dict, steps: int, ax=None, measure: str | None = None):
    """Each ``(method, lr)`` run of ``steps`` steps as a path through its evaluations (mean over seeds): what the mix
    learns (x: ``measure``, default :func:`learned_measure`) against the share of the known facts kept (y), from the
    base model (the open circle) to the last step (labelled with the rate). A path that drops before it moves right
    forgets before it learns. Colours from ``report.color_of``. Returns the axes."""
    import matplotlib.pyplot as plt
    from .report import color_of
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5), facecolor="white")
    n_known, measure = len(results["base"]["known"]), learned_measure(results, measure)
    start = (results["base"][measure], 1.0)
    labelled = set()
    for m, lr in _runs_of(results, steps):
        x = [start[0]] + curve(results, m, lr, measure, steps).mean(0).tolist()
        y = [start[1]] + (curve(results, m, lr, "knowledge_kept", steps).mean(0) / n_known).tolist()
        ax.plot(x, y, "-o", ms=3, lw=1.2, color=color_of(m), label=None if m in labelled else METHOD_LABELS.get(m, m))
        labelled.add(m)
        ax.annotate(f"{lr:.0e}", (x[-1], y[-1]), fontsize=7, xytext=(4, -9), textcoords="offset points",
                    color=color_of(m))
    ax.scatter(*start, s=60, facecolors="white", edgecolors="black", zorder=4, label="base model")
    ax.set(xlabel=MEASURE_LABELS[measure], ylabel=f"knowledge kept (of {n_known} known facts)", xlim=(-0.03, 1.03),
           ylim=(0, 1.05), title=f"every evaluation of the {steps}-step runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return ax


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m minimal_loramoe.lab.smollm_experiment",
                                description="Chapter 10's experiment on SmolLM2-135M (writes JSON).")
    sub = p.add_subparsers(dest="command", required=True)
    mix_help = (f"the SFT mix, one of {SFT_MIXES}: world-knowledge QA with word reversal (chapter 10; results in "
                f"{RESULTS_FILE.name}) or with the registry codes of invented names, new content "
                f"({CODES_RESULTS_FILE.name}); default reversal. Sets the default --out, the recipe and the grid")
    r = sub.add_parser("run", help="fine-tune and evaluate every (method, lr, seed) not yet in --out")
    r.add_argument("--mix", choices=SFT_MIXES, default="reversal", help=mix_help)
    r.add_argument("--methods", nargs="+", choices=RUN_METHODS,
                   help="default: the methods of the mix's grid (LR_GRIDS[mix]; reversal: no gated_lora)")
    r.add_argument("--lrs", nargs="+", type=float, help="learning rates for every method (default: LR_GRIDS[mix]'s)")
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--steps", type=int, required=True)
    r.add_argument("--eval-steps", nargs="*", type=int, default=[], help="also evaluate after these steps")
    r.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    r.add_argument("--out", help="results file (default: runs/<the mix's file name>; resumed if it exists)")
    r.add_argument("--store", action="store_true", help=resources.STORE_HELP)
    r.add_argument("--no-progress", action="store_true", help="no progress bar (a log file stays readable)")
    r.add_argument("--short-probe", action="store_true",
                   help="every evaluation also asks the known questions in the short format (five training pairs "
                        "as earlier chat turns, as the base model's known_short)")
    s = sub.add_parser("show", help="print the table of a results file")
    s.add_argument("--mix", choices=SFT_MIXES, default="reversal", help="whose committed results file to show")
    s.add_argument("--out", help="results file (default: the mix's committed one, which the chapter reads)")
    m = sub.add_parser("merge", help="merge the files of runs made in parallel into --out")
    m.add_argument("files", nargs="+")
    m.add_argument("--mix", choices=SFT_MIXES, default="reversal", help="whose results file to merge into")
    m.add_argument("--out", help="results file to add the points to (default: runs/<the mix's file name>)")
    m.add_argument("--store", action="store_true", help=resources.STORE_HELP)
    k = sub.add_parser("known-short", help="store in a results file which probe questions the base model answers "
                       "in the short format (a file written before it existed)")
    k.add_argument("--mix", choices=SFT_MIXES, default="reversal", help="whose results file")
    k.add_argument("--out", help="results file (default: runs/<the mix's file name>)")
    k.add_argument("--store", action="store_true", help=resources.STORE_HELP)
    args = p.parse_args(argv)
    committed = RESULTS_FILES[args.mix]
    if args.command == "show":
        out = args.out or str(committed)
    else:
        out = str(resources.cli_out(args.out, args.store, committed, committed.name))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    if args.command == "show":
        print(results_table(load_results(out)))
        return
    if args.command == "merge":
        print(results_table(merge_results(args.files, out)))
        return
    if args.command == "known-short":
        if not Path(out).is_file():
            p.error(f"--out: no results file at {out}")
        base = add_known_short(out)["base"]
        print(f"{out}: the base model answers {len(base['known_short'])} of {base['n_probe']} probe questions in the "
              f"short format, {len(set(base['known_short']) & set(base['known']))} of the {len(base['known'])} "
              "it answers plainly")
        return
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    grid = LR_GRIDS[args.mix]
    methods = args.methods or list(grid)
    if not args.lrs and any(m not in grid for m in methods):
        p.error(f"--lrs: the {args.mix} mix has no grid for {[m for m in methods if m not in grid]}; give the rates")
    torch.set_num_threads(args.threads)
    points = [(m, lr, seed) for seed in args.seeds for m in methods for lr in (args.lrs or grid[m])]
    print(results_table(run_experiment(points, args.steps, out, args.eval_steps, recipe=RECIPES[args.mix],
                                       progress=not args.no_progress, short_probe=args.short_probe)))


if __name__ == "__main__":
    main()
