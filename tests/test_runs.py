"""The run key, the run store and the process pool (``runs.py``): the committed store reads through them."""
import json
from dataclasses import astuple

import pytest

from minimal_loramoe.lab import reproduce, resources, runs
from minimal_loramoe.lab.runs import RunKey


def _double(x):  # a module-level function: the spawned workers import it
    return 2 * x


def test_the_key_names_todays_files():
    key = RunKey("cipher", "full_ft", 2e-5, 2)
    assert key.path("R").as_posix() == "R/cipher/full_ft/lr2e-05-seed2.json"
    assert key.adapter_path("R").as_posix() == "R/cipher/full_ft/adapters/lr2e-05-seed2.safetensors"
    assert RunKey.from_path(key.path("R"), "R") == key
    assert RunKey("easy", "lora", 0.001, 0).stem == "lr0.001-seed0"
    with pytest.raises(ValueError):
        RunKey.from_path("R/cipher/full_ft/adapters/lr2e-05-seed2.json", "R")


def test_every_committed_run_loads_through_the_store_and_its_key_matches_its_path():
    paths = sorted(p for p in resources.RUNS_DIR.glob("*/*/*.json"))
    assert paths, "the committed run store is empty"
    assert [k.path() for k in runs.keys()] == paths
    for path in paths:
        key = RunKey.from_path(path)
        assert key.path() == path
        run = runs.read(key)
        assert run == json.loads(path.read_text())
        assert (run["mix"], run["method"], run["lr"], run["seed"]) == (key.mix, key.method, key.lr, key.seed)
        assert runs.load(key, [int(n) for n in run["evals"]], n_per_task=run.get("n_per_task", 100)) == run
        assert reproduce.run_path(*astuple(key)) == path  # the old entry point, same file


def test_kept_adapters_are_where_the_key_says():
    kept = sorted(resources.RUNS_DIR.glob("*/*/adapters/*.safetensors"))
    for path in kept:
        key = RunKey.from_path(path.parent.parent / (path.stem + ".json"))
        assert key.adapter_path() == path == reproduce.adapter_path(key.mix, key.method, key.lr, key.seed)


def test_load_checks_sizes_and_eval_size_and_save_round_trips(tmp_path):
    key = RunKey("easy", "lora", 1e-3, 0)
    assert runs.load(key, root=tmp_path) is None
    run = {"mix": "easy", "method": "lora", "lr": 1e-3, "seed": 0, "n_per_task": 20,
           "evals": {"64": {"knowledge": 0.5}, "128": {"knowledge": 0.25}}}
    assert runs.save(key, run, tmp_path) == tmp_path / "easy" / "lora" / "lr0.001-seed0.json"
    assert runs.load(key, [64, 128], tmp_path, n_per_task=20) == run
    assert runs.load(key, [64, 256], tmp_path, n_per_task=20) is None  # does not cover 256
    assert runs.load(key, [64], tmp_path) is None  # another task-eval size
    assert runs.keys(tmp_path) == [key] and runs.keys(tmp_path, "cipher") == []


@pytest.mark.slow
def test_the_pool_runs_a_function_in_two_processes():
    out = dict(runs.pool_results([(x, _double, (x,), {}) for x in range(4)], workers=2))
    assert out == {0: 0, 1: 2, 2: 4, 3: 6}
    assert runs.process_pool(2)._mp_context.get_start_method() == "spawn"
