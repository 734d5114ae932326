"""The package stands on two floors, one folder each: the method (every module at the top of ``minimal_loramoe/``:
what a user imports to put LoRAMoE into a model and train it) and the laboratory (every module of
``minimal_loramoe/lab/``: the book's tiny world and experiments). The laboratory imports the method, never the
reverse, and no module imports itself back through others."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minimal_loramoe"
LAB = PACKAGE / "lab"


def method_modules() -> set[str]:
    """``minimal_loramoe``, ``minimal_loramoe.lora``, ...: the modules at the top of the package."""
    return {"minimal_loramoe" if p.stem == "__init__" else f"minimal_loramoe.{p.stem}" for p in PACKAGE.glob("*.py")}


def lab_modules() -> set[str]:
    """``minimal_loramoe.lab``, ``minimal_loramoe.lab.world``, ...: the modules of the laboratory."""
    return {"minimal_loramoe.lab" if p.stem == "__init__" else f"minimal_loramoe.lab.{p.stem}"
            for p in LAB.glob("*.py")}


def file_of(module: str) -> Path:
    parts = module.split(".")[1:]
    folder = PACKAGE.joinpath(*parts)
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its file (function-level imports included), as
    absolute names; ``from pkg import name`` counts ``pkg.name`` if that is a module, else ``pkg``."""
    path = file_of(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    known = method_modules() | lab_modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("minimal_loramoe"):
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & known
            found |= subs or {target}
            if len(subs) < len(node.names):  # names that are not modules come from the package itself
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("minimal_loramoe")}
    return (found & known) - {module}


def graph() -> dict[str, set[str]]:
    return {m: imports_of(m) for m in method_modules() | lab_modules()}


def test_the_floors_are_folders():
    assert (LAB / "__init__.py").is_file()
    assert "minimal_loramoe.finetune" in method_modules() and "minimal_loramoe.lab.world" in lab_modules()
    assert not {p.stem for p in PACKAGE.glob("*.py")} & {p.stem for p in LAB.glob("*.py")} - {"__init__"}, \
        "a module name on both floors"
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == {"lab"}, f"the package has two floors, not {sorted(subpackages)}"


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
    for m in sorted(method_modules()):
        assert not g[m] & lab_modules(), f"{m} imports the laboratory: {sorted(g[m] & lab_modules())}"


def test_the_check_sees_a_method_module_importing_the_laboratory(tmp_path, monkeypatch):
    """The check itself: a method module with ``from .lab import world`` (or an absolute import) is caught."""
    for line in ("from .lab import world", "from .lab.world import make_world", "from . import lab",
                 "import minimal_loramoe.lab.world", "from minimal_loramoe.lab import world"):
        fake = tmp_path / "minimal_loramoe"
        (fake / "lab").mkdir(parents=True, exist_ok=True)
        (fake / "__init__.py").write_text("")
        (fake / "lab" / "__init__.py").write_text("from . import world\n")
        (fake / "lab" / "world.py").write_text("from .. import lora\n")
        (fake / "lora.py").write_text(line + "\n")
        monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
        monkeypatch.setattr(sys.modules[__name__], "LAB", fake / "lab")
        assert graph()["minimal_loramoe.lora"] & lab_modules(), line
        with pytest.raises(pytest.fail.Exception, match="import cycle"):
            test_the_import_graph_has_no_cycle()


def test_the_laboratory_imports_the_method_one_level_up():
    """Relative imports in lab/ reach the method with ``..``: a ``from .x`` naming a method module is a mistake
    that only fails at import time."""
    method = {m.rpartition(".")[2] for m in method_modules()}
    lab = {m.rpartition(".")[2] for m in lab_modules()}
    for path in LAB.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                name = node.module.split(".")[0]
                assert name in lab and name not in method - {"__init__"}, f"{path.name}: from .{node.module}"


def _lab_modules_loaded(names) -> list[str]:
    code = ("import importlib, json, sys\n"
            f"for n in {list(names)!r}: importlib.import_module(n)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'minimal_loramoe.lab' "
            "or m.startswith('minimal_loramoe.lab.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_importing_the_method_loads_no_laboratory_module():
    """In a fresh interpreter, every method module together; on failure, each alone names the culprit."""
    method = sorted(method_modules())
    loaded = _lab_modules_loaded(method)
    if loaded:
        culprits = {m: _lab_modules_loaded([m]) for m in method}
        pytest.fail(f"importing the method loads {loaded}: " + str({m: v for m, v in culprits.items() if v}))


@pytest.mark.slow
def test_the_laboratory_module_list_is_what_the_check_would_catch():
    """A sanity check of the subprocess check itself: importing a laboratory module is seen."""
    assert "minimal_loramoe.lab.world" in _lab_modules_loaded(["minimal_loramoe.lab.evaluate"])
