"""tune: the selection rule, and the command over a stubbed experiment."""
import json

import pytest

from minimal_loramoe.lab import tune
from minimal_loramoe.lab.reproduce import TUNED_LR_FILE


def test_select_takes_the_best_knowledge_among_rates_that_learn_the_tasks():
    grid = {1e-4: (0.9, 0.5), 5e-4: (0.8, 0.99), 1e-3: (0.7, 1.0), 2e-3: (0.85, 0.98)}
    assert tune.select(grid) == 2e-3  # 1e-4 keeps more knowledge but does not reach MIN_DOWNSTREAM


def test_select_falls_back_to_the_best_downstream_when_no_rate_learns_enough():
    assert tune.select({1e-4: (0.9, 0.5), 1e-3: (0.2, 0.9)}) == 1e-3


def test_select_counts_the_threshold_itself_as_enough():
    assert tune.select({1e-4: (0.9, tune.MIN_DOWNSTREAM), 1e-3: (0.2, 1.0)}) == 1e-4


def test_main_measures_only_what_is_missing_and_shares_rates(tmp_path, monkeypatch):
    calls = []

    def fake_run_experiment(sizes, seeds, methods, lrs, n_per_task, progress):
        (method,) = methods
        calls.append((method, lrs[method]))
        final = {"knowledge": lrs[method] * 100, "downstream": 1.0}
        return {"runs": {method: {s: {sizes[-1]: final} for s in seeds}}}

    monkeypatch.setattr(tune, "run_experiment", fake_run_experiment)
    out = tmp_path / "tuned.json"
    tune.main(["--methods", "loramoe", "--grid", "1e-3", "2e-3", "--out", str(out)])
    assert calls == [("loramoe", 1e-3), ("loramoe", 2e-3)]
    result = json.loads(out.read_text())
    assert result["lr"] == {"loramoe": 2e-3, **{m: 2e-3 for m, of in tune.SHARES_LR_OF.items() if of == "loramoe"}}
    tune.main(["--methods", "loramoe", "--grid", "1e-3", "2e-3", "5e-3", "--out", str(out)])
    assert calls[2:] == [("loramoe", 5e-3)]  # stored grid points are not measured again


def test_workers_measure_the_missing_points_in_a_pool_one_thread_each(tmp_path, monkeypatch):
    submitted = []

    def fake_pool_results(calls, workers):  # in this process: monkeypatched functions do not reach spawned workers
        assert workers == 2
        for tag, fn, args, kwargs in calls:
            submitted.append((tag, kwargs))
            yield tag, (args[1] * 100, 1.0)  # knowledge grows with the rate, every rate learns the tasks

    monkeypatch.setattr(tune, "pool_results", fake_pool_results)
    out = tmp_path / "tuned.json"
    tune.main(["--methods", "lora", "--grid", "1e-3", "2e-3", "--out", str(out), "--workers", "2"])
    assert submitted == [(("lora", 1e-3), {"threads": 1}), (("lora", 2e-3), {"threads": 1})]
    assert json.loads(out.read_text())["lr"]["lora"] == 2e-3
    with pytest.raises(SystemExit):
        tune.main(["--methods", "lora", "--out", str(out), "--workers", "0"])


def test_only_tuned_methods_are_accepted():
    with pytest.raises(SystemExit):
        tune.main(["--methods", "slim"])


def test_every_committed_choice_is_inside_its_grid():
    committed = json.loads(TUNED_LR_FILE.read_text())
    for method in tune.TUNED_METHODS:
        grid = {float(lr): (v["knowledge"], v["downstream"]) for lr, v in committed["grid"][method].items()}
        chosen = committed["lr"][method]
        assert tune.select(grid) == chosen, f"{method}: the committed choice follows the rule"
        assert min(grid) < chosen < max(grid), f"{method}: the chosen rate {chosen:g} is at the end of its grid"
