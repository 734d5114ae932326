"""A fast smoke run of the main job at the tiny scale (256 SFT examples, one seed)."""
import json

import matplotlib
import pytest

from minimal_loramoe.lab import reproduce

matplotlib.use("Agg")


@pytest.mark.slow
def test_reproduce_cli_tiny_scale(tmp_path):
    out, fig = tmp_path / "res.json", tmp_path / "fig.png"
    reproduce.main(["--scale", "tiny", "--json", str(out),
                    "--figure", str(fig), "--threads", "2"])
    res = json.loads(out.read_text())
    assert res["sft_sizes"] == reproduce.SCALES["tiny"]["sft_sizes"] and res["seeds"] == [0]
    for key in ("knowledge", "knowledge_instruction", "downstream"):
        assert set(res[key]) == {"pretrained", "full_ft", "lora", "loramoe"}
        assert all(len(v) == 3 and all(0 <= x <= 1 for x in v) for k, v in res[key].items() if k != "pretrained")
        assert all(len(v) == 3 for v in res[key + "_std"].values())
    assert res["knowledge"]["pretrained"] > 0.8  # the shipped checkpoint knows its world
    assert set(res["router_group_weight"]) == {"loramoe"}
    g = res["router_group_weight"]["loramoe"]
    assert 0 < g["knowledge_samples"] < 1 and 0 < g["task_samples"] < 1
    assert res["weight_change"]["full_ft"] > 0 and res["weight_change"]["lora"] == 0 == res["weight_change"]["loramoe"]
    assert fig.stat().st_size > 10_000


def test_run_experiment_rejects_unknown_method():
    with pytest.raises(ValueError, match="methods must be among"):
        reproduce.run_experiment([10], [0], ["qlora"], {"qlora": 1e-3})
    with pytest.raises(ValueError, match="no learning rate"):
        reproduce.run_experiment([10], [0], ["lora"], {})
