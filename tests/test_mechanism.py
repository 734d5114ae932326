"""Mechanism measurements on adapters kept in a tiny run store (64 SFT examples)."""
import pytest

from minimal_loramoe.lab import fronts, mechanism


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    points = [("cipher", m, 1e-3, 0) for m in mechanism.MEASURED]
    fronts.run_grid(points, workers=1, sizes=(64,), root=root, progress=False, keep_adapters=True)
    return root


@pytest.mark.slow
def test_measure_reads_kept_adapters(store):
    res = mechanism.measure("cipher", 1e-3, [0], root=store)
    assert set(res["points"]) == set(mechanism.MEASURED)
    kinds = {"knowledge", "knowledge_instruction", "tasks", "new_content"}
    for method, seeds in res["points"].items():
        p = seeds["0"]
        assert set(p["effect"]) == kinds and all(v > 0 for v in p["effect"].values())
    assert "gate" not in res["points"]["lora"]["0"]
    assert all(0 < g < 1 for g in res["points"]["gated_lora"]["0"]["gate"].values())
    moe = res["points"]["loramoe"]["0"]
    assert all(1 / 6 - 1e-6 <= g <= 1 for g in moe["gate"].values())  # largest of 6 gates
    assert set(moe["forced"]) == {"router", "knowledge_group_only", "task_group_only"}
    assert all(0 <= w <= 1 for w in moe["knowledge_group_weight"].values())


def test_missing_adapters_are_named(store):
    with pytest.raises(FileNotFoundError, match="no kept adapters"):
        mechanism.measure("cipher", 2e-3, [0], root=store, n_per_task=5)
