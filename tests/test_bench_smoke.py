"""Smoke test of benchmarks/bench.py: the --quick path runs and returns a well-formed result; the fused LoRAMoE
forward (and every alternative the benchmark times) computes what the per-expert loop computes. No timing is
asserted: on a shared CPU only the structure and the numerics are stable."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from minimal_loramoe import LoRAMoELinear

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        results = bench.main(["--quick", "--out", str(out), "--plot", str(out / "plot.png")])
    finally:
        torch.set_num_threads(threads)  # the benchmark sets its own thread count
    return results, out


def test_fused_equals_loop_in_values_and_gradients(bench):
    assert bench.fused_matches_loop() < 1e-4
    assert bench.fused_matches_loop(E=6, r=4, d_in=40, d_out=30, tokens=7, seed=1) < 1e-4


@pytest.mark.parametrize("option", ["fused_naive", "fused_scaling_late", "fused_repeat_interleave", "fused_addmm"])
def test_options_equal_forward(bench, option):
    torch.manual_seed(0)
    layer = LoRAMoELinear(nn.Linear(12, 9), num_experts=4, rank=3, alpha=32, dropout=0.05).eval()
    nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 5, 12)
    expected = layer(x)
    got = getattr(bench, option)(layer, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert layer.last_gates.shape == (2, 5, 4) and layer.last_gates.dtype == torch.float32


@pytest.mark.slow  # runs the benchmark's --quick path
def test_quick_result_structure(quick, bench):
    results, out = quick
    assert results["fused_vs_loop_max_abs_diff"] < 1e-4
    (shape,) = results["layers"]
    rows = shape["rows"]
    for name in ["frozen base", "LoRA r=32", "PEFT LoRA r=32", "LoRAMoE E=8 r=4", "per-expert loop E=8 r=4"]:
        assert name in rows, name
    for name, row in rows.items():
        assert row["ms"] > 0 and len(row["times_ms"]) == results["config"]["repeats"]
        if name == "frozen base":
            assert row["reference"] is None and row["ratio"] is None
        else:
            assert row["reference"] == "LoRA r=32"
            assert math.isfinite(row["ratio"]) and row["ratio"] > 0
    assert rows["LoRA r=32"]["ratio"] == 1.0
    model = results["model"]["rows"]
    assert list(model) == list(bench.MODEL_CONFIGS)
    assert all(row["tokens_per_s"] > 0 for row in model.values())
    goals = results["goals"]
    assert len(goals) == 3 and all(isinstance(g["met"], (bool, type(None))) for g in goals.values())


@pytest.mark.slow  # runs the benchmark's --quick path
def test_quick_memory_and_files(quick):
    results, out = quick
    model = results["model"]["rows"]
    if Path("/proc/self/clear_refs").exists():  # Linux: the two goal configurations are measured
        assert model["LoRA"]["peak_mib"] > 0 and model["LoRAMoE"]["peak_mib"] > 0
        assert model["LoRAMoE"]["peak_ratio"] == pytest.approx(model["LoRAMoE"]["peak_mib"] / model["LoRA"]["peak_mib"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["goals"].keys() == results["goals"].keys()
    assert "| LoRAMoE E=8 r=4 |" in (out / "results.md").read_text()
    assert (out / "plot.png").stat().st_size > 10_000


def test_bad_arguments(bench):
    with pytest.raises(ValueError, match="threads must be >= 1"):
        bench.main(["--quick", "--threads", "0"])
    with pytest.raises(ValueError, match="name must be one of"):
        bench.model_step_fn("QLoRA", (2, 4), (2, 2))
