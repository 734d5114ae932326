"""The run store, the grid runner and the fronts JSON, on a tiny scale (128 SFT examples)."""
import json

import matplotlib
import pytest

from minimal_loramoe.lab import fronts, reproduce
from minimal_loramoe.lab.world import new_content_eval, sft_dataset

matplotlib.use("Agg")
SIZES = (64, 128)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    points = [("cipher", "full_ft", 1e-4, 0), ("cipher", "lora", 1e-3, 0), ("cipher", "lora", 1e-3, 1)]
    fronts.run_grid(points, workers=1, sizes=SIZES, root=root, progress=False)
    return root


@pytest.mark.slow
def test_store_holds_one_file_per_run_and_is_not_rerun(store):
    path = reproduce.run_path("cipher", "lora", 1e-3, 1, store)
    run = json.loads(path.read_text())
    assert run["method"] == "lora" and run["seed"] == 1 and set(run["evals"]) == {"64", "128"}
    assert "new_content" in run["evals"]["128"]
    before = path.stat().st_mtime_ns
    again = reproduce.run_point("cipher", "lora", 1e-3, 1, SIZES, root=store)  # read, not re-run
    assert path.stat().st_mtime_ns == before and again == run
    assert reproduce.load_run("cipher", "lora", 1e-3, 1, (64, 128, 256), store) is None  # does not cover 256
    assert reproduce.load_run("cipher", "lora", 1e-3, 1, SIZES, store, n_per_task=20) is None  # other eval size


def test_collect_averages_seeds_in_the_documented_schema(store):
    out = fronts.collect("cipher", root=store, sizes=SIZES)
    assert out["mix"] == "cipher" and out["largest"] == 128
    point = out["tradeoff"]["lora"]["0.001"]
    assert point["seeds"] == [0, 1]
    for key in ("knowledge", "downstream", "new_content"):
        vals = point["per_seed"][key]
        assert point[key] == pytest.approx(sum(vals) / 2, abs=1e-4) and len(point["curve"][key]) == 2
    assert set(out["tradeoff"]) == {"full_ft", "lora"}
    assert fronts.collect("easy", root=store, sizes=SIZES)["tradeoff"] == {}


def test_seed_mean_point_is_the_mean_the_sample_std_and_the_seeds():
    def run(seed, k):
        return {"seed": seed, "evals": {"10": {"knowledge": k / 2, "downstream": 1.0},
                                        "20": {"knowledge": k, "downstream": 1.0}}}
    p = fronts.seed_mean_point([run(2, 0.6), run(0, 0.8), run(1, 0.7)], [10, 20])
    assert p["seeds"] == [0, 1, 2] and p["per_seed"]["knowledge"] == [0.8, 0.7, 0.6]
    assert p["knowledge"] == pytest.approx(0.7) and p["knowledge_std"] == pytest.approx(0.1)  # ddof = 1
    assert p["curve"]["knowledge"] == pytest.approx([0.35, 0.7]) and p["downstream_std"] == 0.0
    assert "new_content" not in p  # only the metrics the runs have
    assert fronts.seed_mean_point([run(0, 0.8)], [10, 20])["knowledge_std"] is None  # one seed: no spread


def test_best_at_picks_the_most_knowledge_among_points_that_learned_enough():
    toy = {"mix": "cipher", "largest": 1, "tradeoff": {"lora": {
        "0.001": {"knowledge": 0.9, "new_content": 0.5}, "0.002": {"knowledge": 0.6, "new_content": 0.95},
        "0.005": {"knowledge": 0.4, "new_content": 0.99}}}}
    assert fronts.best_at(toy, "lora", "new_content", 0.9) == ("0.002", toy["tradeoff"]["lora"]["0.002"])
    assert fronts.best_at(toy, "lora", "new_content", 0.999) == (None, None)
    assert fronts.best_at(toy, "full_ft", "new_content", 0.1) == (None, None)
    with pytest.raises(ValueError, match="learned"):
        fronts.best_at(toy, "lora", "tasks")


def test_plot_fronts_draws_one_line_per_method(store):
    ax = fronts.plot_fronts(fronts.collect("cipher", root=store, sizes=SIZES), learned="new_content")
    assert len(ax.get_legend().get_texts()) == 2


def test_cipher_mix_has_new_content_the_easy_mix_lacks():
    from minimal_loramoe.lab.model import load_pretrained
    _, _, world = load_pretrained()
    cipher = sft_dataset(world, 2000, mix="cipher", seed=0)
    share = sum(t == "cipher" for t in cipher["task"]) / len(cipher)
    assert 0.26 < share < 0.34 and set(cipher["type"]) == {0, 1}
    assert "cipher" not in set(sft_dataset(world, 2000, seed=0)["task"])
    assert sft_dataset(world, 300, seed=3)["prompt"] == sft_dataset(world, 300, seed=3, mix="easy")["prompt"]
    ev = new_content_eval(world)
    assert len(ev) == 676 and len(set(ev["prompt"])) == 676
    with pytest.raises(ValueError, match="mix"):
        sft_dataset(world, 10, mix="hard")
    with pytest.raises(ValueError, match="knowledge_fraction \\+ new_content_fraction"):
        sft_dataset(world, 10, knowledge_fraction=0.8, mix="cipher", new_content_fraction=0.3)


def test_reproduce_only_stored_summarises_what_the_store_holds(store):
    lrs = {"full_ft": 1e-4, "lora": 1e-3}
    raw = reproduce.run_experiment(SIZES, [0, 1], ["full_ft", "lora"], lrs, 100, progress=False, mix="cipher",
                                   store=store, only_stored=True)
    res = reproduce.summarize(raw, SIZES, [0, 1], lrs)
    assert res["seeds_of"] == {"full_ft": [0], "lora": [0, 1]}  # full_ft has no stored seed 1: not run
    assert len(res["per_seed"]["lora"]["new_content"]) == 2 and len(res["per_seed"]["full_ft"]["knowledge"]) == 1
    with pytest.raises(ValueError, match="only_stored needs a store"):
        reproduce.run_experiment(SIZES, [0], ["lora"], lrs, only_stored=True)


@pytest.mark.slow
def test_kept_adapters_load_and_a_rerun_for_them_repeats_the_stored_run(store):
    from safetensors.torch import load_file
    # the stored run has no adapters: keep_adapter runs it again, and the seeded run repeats exactly
    run = reproduce.run_point("cipher", "lora", 1e-3, 0, SIZES, root=store, keep_adapter=True)
    path = reproduce.adapter_path("cipher", "lora", 1e-3, 0, store)
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["repeats_stored_run"] is True and record["evals"]["128"]["knowledge"] == run["evals"]["128"]["knowledge"]
    tensors = load_file(path)
    assert tensors and all(".base." not in k for k in tensors)  # adapters only, never the frozen layer
    assert not list(path.parent.glob("*.tmp*"))
    # a new run keeps its adapters at once; the store's run JSONs are the only *.json files collect reads
    reproduce.run_point("cipher", "gated_lora", 1e-3, 0, SIZES, root=store, keep_adapter=True)
    assert reproduce.adapter_path("cipher", "gated_lora", 1e-3, 0, store).is_file()
    assert json.loads(reproduce.adapter_path("cipher", "gated_lora", 1e-3, 0, store).with_suffix(".json")
                      .read_text())["repeats_stored_run"] is None
    assert set(fronts.collect("cipher", root=store, sizes=SIZES)["tradeoff"]["lora"]) == {"0.001"}


@pytest.mark.slow
def test_live_fronts_is_the_fronts_schema_of_runs_on_a_denser_cipher_mix():
    live = fronts.live_fronts([("lora", 1e-3), ("full_ft", 1e-4)], 128, 0.7, workers=1, progress=False)
    assert live["mix"] == "cipher" and live["largest"] == 128 and list(live["tradeoff"]) == ["lora", "full_ft"]
    point = live["tradeoff"]["lora"]["0.001"]
    assert point["seeds"] == [0] and point["knowledge_std"] is None and 0 <= point["new_content"] <= 1
    # the same run as one_run on that mix
    evals = reproduce.one_run("lora", 1e-3, 0, [128], mix="cipher", new_content_fraction=0.7)
    assert point["knowledge"] == round(evals[128]["knowledge"], 4)
    world = reproduce.load_pretrained()[2]
    n_new = [sft_dataset(world, 1000, 0.2, 0, "cipher", f)["task"].count("cipher") for f in (0.3, 0.7)]
    assert 250 < n_new[0] < 350 and 650 < n_new[1] < 750  # denser than the store's mix


@pytest.mark.parametrize("kw, match", [(dict(points=[("nope", 1e-3)]), "method"),
                                       (dict(points=[("lora", 0)]), "learning rates"),
                                       (dict(size=0), "size"), (dict(new_content_fraction=0.9), "new_content_fraction"),
                                       (dict(workers=0), "workers")])
def test_live_fronts_names_a_bad_argument_before_any_work(kw, match):
    args = {**dict(points=[("lora", 1e-3)], size=64, new_content_fraction=0.5), **kw}
    with pytest.raises(ValueError, match=match):
        fronts.live_fronts(**args)


def test_family_point_applies_the_rule_over_slims_whole_grid():
    pt = lambda new, k: {"new_content": new, "knowledge": k, "seeds": [0]}  # noqa: E731
    fr = {"mix": "cipher", "tradeoff": {"slim": {"0.0005": pt(0.0, 0.98)},
                                        "slim_no_merge": {"0.0005": pt(0.87, 0.89), "0.001": pt(0.76, 0.74)},
                                        "slim_l1w1_p0": {"0.0005": pt(0.91, 0.80), "0.001": pt(0.95, 0.70)},
                                        "loramoe": {"0.0005": pt(0.99, 0.99)}}}
    fam = fronts.family_point(fr, "slim")
    assert len(fam["points"]) == 5 and ("loramoe", "0.0005") not in fam["points"]
    assert fam["best"][:2] == ("slim_l1w1_p0", "0.0005") and fam["most_learned"][:2] == ("slim_l1w1_p0", "0.001")
    fr["tradeoff"].pop("slim_l1w1_p0")
    assert fronts.family_point(fr, "slim")["best"] is None
    with pytest.raises(ValueError, match="no runs"):
        fronts.family_point({"mix": "cipher", "tradeoff": {}}, "slim")


def test_plot_family_draws_every_setting_in_the_methods_colour():
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from minimal_loramoe.lab.report import color_of
    pt = lambda new, k: {"new_content": new, "knowledge": k, "seeds": [0]}  # noqa: E731
    fr = {"mix": "cipher", "tradeoff": {"slim_no_merge": {"0.0005": pt(0.87, 0.89)},
                                        "slim_l1w1_p0": {"0.0005": pt(0.68, 0.94), "0.001": pt(0.95, 0.70)}}}
    ax = fronts.plot_family(fr, "slim")
    assert len(ax.collections) == 4  # three points and the ringed front point
    assert all(tuple(c.get_facecolor()[0]) == to_rgba(color_of("slim")) for c in ax.collections[:3])
    assert sorted(t.get_text() for t in ax.texts) == ["0/0@0.0005", "1/0@0.0005", "1/0@0.001"]
    plt.close("all")
