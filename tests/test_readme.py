"""The README's results tables are what the committed JSON says (tools/readme_results.py generates them)."""
import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "readme_results.py"


def _tool():
    spec = importlib.util.spec_from_file_location("readme_results", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_results_tables_match_the_committed_json():
    assert _tool().main(["--check"]) == 0, "run: python tools/readme_results.py --write"


def test_the_tables_hold_every_method_and_control():
    tool = _tool()
    text = tool.tables()
    for label in [n for n in tool.NAMES.values()] + [label for _, label in tool.CONTROLS]:
        assert f"| {label} |" in text
