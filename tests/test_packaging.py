"""The package is self-contained (its data ships inside it) and its version floors are the tested ones."""
import re
from pathlib import Path

import pytest

from minimal_loramoe.lab import resources

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def test_the_floors_ci_tests_are_the_lower_bounds_of_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = dict(re.fullmatch(r"([A-Za-z0-9_-]+)>=([0-9.]+)", d).groups() for d in deps)
    floors = dict(line.split("==") for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert floors == {name: (v if v.count(".") == 2 else v + ".0") for name, v in bounds.items()}


def test_everything_the_chapters_read_is_package_data():
    # the data belongs to the package (minimal_loramoe/data), one floor above the laboratory's resources.py
    # (wherever the package is installed: the checkout, or site-packages when the floors check installs it)
    package = Path(resources.__file__).parent.parent
    assert resources.DATA_DIR.parent == package and package.name == "minimal_loramoe"
    assert (ROOT / "minimal_loramoe" / "data").is_dir()
    for path in ["tiny_llama/model.safetensors", "tiny_llama/world_config.json", "world/facts.csv",
                 "results/tuned_lr.json", "results/reproduce_cpu.json", "results/fronts_easy.json",
                 "results/fronts_cipher.json", "results/live_cipher.json", "results/smollm2.json",
                 "smollm2/knowledge_probe.jsonl",
                 "smollm2/knowledge_sft.jsonl", "smollm2/words.txt"]:
        assert resources.data_path(*path.split("/")).is_file(), path
    assert any(resources.RUNS_DIR.rglob("*.json"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "data/**/*" in pyproject["tool"]["setuptools"]["package-data"]["minimal_loramoe"]
    assert not (ROOT / "data").exists(), "data/ moved into minimal_loramoe/data"


def test_cli_defaults_never_write_the_committed_results(tmp_path):
    out = resources.cli_out(None, False, resources.RESULTS_DIR / "x.json", "x.json")
    assert out == Path("runs") / "x.json"
    assert resources.cli_out(None, True, resources.RESULTS_DIR / "x.json", "x.json") == resources.RESULTS_DIR / "x.json"
    assert resources.cli_out(str(tmp_path / "y.json"), False, resources.RESULTS_DIR, "x") == tmp_path / "y.json"


def test_console_scripts_have_a_main():
    import importlib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {n.removeprefix("minimal-loramoe-") for n in scripts} == {"train", "reproduce", "fronts", "tune",
                                                                    "pretrain", "smollm"}
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
