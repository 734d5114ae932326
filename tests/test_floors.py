"""The package stands on two floors: the method (what a user imports to put LoRAMoE into a model and train it) and
the laboratory (the book's tiny world and experiments). The laboratory imports the method, never the reverse, and
no module imports itself back through others."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minimal_loramoe"
METHOD = ("__init__", "utils", "lora", "clusters", "loramoe", "balance", "config", "inject", "slim", "routing", "sft",
          "methods", "checkpoint", "finetune", "train")
LABORATORY = ("resources", "urls", "world", "tokenizer", "model", "pretrain", "evaluate", "runs", "reproduce",
              "fronts", "tune", "mechanism", "smollm", "smollm_experiment", "report", "anatomy")


def modules() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py")}


def imports_of(name: str) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (function-level imports included)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.module or "").split(".")[0] == "minimal_loramoe":
                module = node.module.split(".")[-1] if node.module and node.module != "minimal_loramoe" else None
                if module is not None:
                    found.add(module)
                else:  # from . import a, b: the names that are modules
                    found |= {a.name for a in node.names if a.name in modules()}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("minimal_loramoe.")}
    return found & modules() - {name}


def graph() -> dict[str, set[str]]:
    return {m: imports_of(m) for m in modules()}


def test_every_module_is_on_one_floor():
    assert not set(METHOD) & set(LABORATORY)
    assert modules() == set(METHOD) | set(LABORATORY), "put a new module on a floor: METHOD or LABORATORY"


def test_the_import_graph_has_no_cycle():
    g, state, path = graph(), {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(g[m]):
            if state.get(n) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_no_method_module_imports_the_laboratory_in_its_source():
    g = graph()
    for m in METHOD:
        assert not g[m] & set(LABORATORY), f"{m} imports the laboratory: {sorted(g[m] & set(LABORATORY))}"


def _lab_modules_loaded(names) -> list[str]:
    code = ("import importlib, json, sys\n"
            f"for n in {list(names)!r}: importlib.import_module('minimal_loramoe' if n == '__init__' "
            "else 'minimal_loramoe.' + n)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[-1] in {list(LABORATORY)!r} "
            "and m.startswith('minimal_loramoe.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_importing_the_method_loads_no_laboratory_module():
    """In a fresh interpreter, every method module together; on failure, each alone names the culprit."""
    loaded = _lab_modules_loaded(METHOD)
    if loaded:
        culprits = {m: _lab_modules_loaded([m]) for m in METHOD}
        pytest.fail(f"importing the method loads {loaded}: " + str({m: v for m, v in culprits.items() if v}))


@pytest.mark.slow
def test_the_laboratory_module_list_is_what_the_check_would_catch():
    """A sanity check of the subprocess check itself: importing a laboratory module is seen."""
    assert "minimal_loramoe.world" in _lab_modules_loaded(["evaluate"])
