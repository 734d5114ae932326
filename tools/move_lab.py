"""Move the laboratory into its own subpackage, ``minimal_loramoe/lab/``, and rewrite every reference to it.

    python tools/move_lab.py            # in the root of a checkout; re-runnable (a second run changes nothing)
    python tools/move_lab.py --dry-run  # list what would change

The method stays at the top of the package (``METHOD`` below: what a user imports to put LoRAMoE into a model and
train it); every other module of ``minimal_loramoe/`` is the laboratory and is ``git mv``-ed into ``lab/``. Then:

* laboratory modules import the method relatively one level up (``from ..finetune import x``, ``from .. import
  checkpoint``) and each other as before (``from .world import x``, ``from . import resources``);
* everywhere else (package modules, tests, notebooks, README, book, .ci, benchmarks, pyproject.toml, workflows):
  ``minimal_loramoe.<lab module>`` becomes ``minimal_loramoe.lab.<lab module>`` (imports, ``python -m``, entry points,
  ``:mod:`` references, monkeypatch targets), ``minimal_loramoe/<lab module>.py`` becomes
  ``minimal_loramoe/lab/<lab module>.py``, and ``from minimal_loramoe import <method names>, <lab modules>`` splits
  into a method line and a ``from minimal_loramoe.lab import ...`` line;
* notebooks: only the ``source`` of each cell is rewritten (code and Markdown); outputs and metadata are left byte
  for byte, and the file is written back in Jupyter's own format (checked to round-trip unchanged first).

Package data stays where it is (``minimal_loramoe/data/``, found by ``lab/resources.py`` through
``importlib.resources.files("minimal_loramoe")``). Generated folders (``_student_book/``, ``build/``), the package data,
recorded benchmark results (JSON), this script and ``tools/bit_identical.py`` are not touched.

What the first application (branch ``lab_floor``) changed by hand on top of this script, to bring along when it is
re-applied to a later checkout (e.g. one whose notebooks were re-executed meanwhile): ``tests/test_floors.py`` (the
floors as folders: ``git checkout lab_floor -- tests/test_floors.py``), ``tests/test_packaging.py`` (the package data
is one floor above ``lab/resources.py``), and the prose on the two floors in the README, ``book/design_notes.md`` and
``lab/smollm_experiment.py``'s template note. Then check: ``python tools/check_notebook_imports.py notebooks/*.ipynb``
(every notebook's imports, no cell run) and ``python -m pytest -m "not slow" tests``.
"""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path.cwd()
PACKAGE = ROOT / "minimal_loramoe"
LAB = PACKAGE / "lab"
METHOD = ("__init__", "utils", "lora", "clusters", "loramoe", "balance", "config", "inject", "slim", "routing", "sft",
          "methods", "checkpoint", "finetune", "train")
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".sh", ".toml", ".yml", ".yaml", ".cfg", ".txt"}
TEXT_NAMES = {".ci/run"}
SKIP_PREFIXES = ("_student_book/", "build/", "minimal_loramoe/data/")
SKIP_FILES = {"tools/move_lab.py", "tools/bit_identical.py"}  # this script, and one that imports both layouts

# The rooms of the laboratory, in the order of the book, for lab/__init__.py (a new module gets its docstring's
# first line).
ROOMS = {
    "world": "the synthetic world: facts, bios, the downstream tasks and the SFT mixes",
    "tokenizer": "its word-level tokenizer",
    "model": "the tiny LLaMA and loading the shipped checkpoint",
    "pretrain": "pretraining the tiny LLaMA on the world",
    "evaluate": "knowledge and task accuracy on the world",
    "resources": "where the package data lives (checkpoint, world samples, results, run store)",
    "urls": "the repository's addresses (Colab, the published book)",
    "runs": "the run store: one run key, reading and writing runs and their adapters, the one process pool",
    "reproduce": "the forgetting experiment as one command (fixed recipe, growing data)",
    "tune": "the fixed recipe's learning rates (one rule for every method)",
    "fronts": "learning-forgetting fronts over a learning-rate grid",
    "report": "how results are reported: spread, intervals, the one rule for comparing fronts, colours",
    "mechanism": "where an adapter acts and how its router decides, on adapters kept in the run store",
    "anatomy": "statistics and figures of one LoRAMoE layer (chapters 5 and 6)",
    "smollm": "the real model of chapter 10 (SmolLM2-135M): loading, probe, chat format, scoring, SFT mixes",
    "smollm_experiment": "chapter 10's experiment on that model: recipes, grids, results files, figures",
}


def git(*args) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def lab_modules() -> list[str]:
    """Every laboratory module: those already in lab/ and every flat module that is not the method."""
    flat = {p.stem for p in PACKAGE.glob("*.py")} - set(METHOD)
    moved = {p.stem for p in LAB.glob("*.py")} - {"__init__"} if LAB.is_dir() else set()
    return sorted(flat | moved, key=lambda m: (-len(m), m))  # longest first: smollm_experiment before smollm


def first_line(module: str) -> str:
    import ast
    doc = ast.get_docstring(ast.parse((LAB / f"{module}.py").read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else module


def lab_init(mods) -> str:
    order = [m for m in ROOMS if m in mods] + sorted(m for m in mods if m not in ROOMS)
    rooms = "\n".join(f"* ``{m}``: {ROOMS.get(m) or first_line(m)}" for m in order)
    return f'''"""The laboratory: the book's tiny world and its experiments, built on the method (``minimal_loramoe``).

It imports the method (``from minimal_loramoe import ...``, here ``from .. import ...``); no method module imports
it (``tests/test_floors.py``). Import its rooms by name, e.g. ``from minimal_loramoe.lab import world, reproduce``:

{rooms}

The package data these rooms read stays in ``minimal_loramoe/data/`` (``resources``).
"""
'''


def names_of(body: str) -> tuple[list[str], str]:
    """The imported names of an import list (``a, b as c``) and a trailing comment."""
    comment = ""
    if "#" in body and "(" not in body:
        body, comment = body.split("#", 1)
        comment = "  #" + comment.rstrip()
    body = re.sub(r"#[^\n]*", "", body)  # comments inside a parenthesized list
    names = [n.strip() for n in body.replace("(", "").replace(")", "").replace("\n", " ").split(",") if n.strip()]
    return names, comment


def import_lines(indent: str, module: str, names: list[str], comment: str = "") -> str:
    return f"{indent}from {module} import {', '.join(names)}{comment}"


def split_absolute_imports(text: str, lab: set) -> str:
    """``from minimal_loramoe import a, world`` -> ``from minimal_loramoe import a`` + ``from minimal_loramoe.lab
    import world`` (one line each; a parenthesized list becomes one line per floor, wrapped at 120 characters)."""
    pattern = re.compile(r"^([ \t]*)from minimal_loramoe import (\([^)]*\)[^\n]*|[^\n]*)$", re.M)

    def fix(m):
        indent, body = m[1], m[2]
        names, comment = names_of(body)
        theirs = [n for n in names if n.split(" as ")[0].strip() in lab]
        if not theirs:
            return m[0]
        ours = [n for n in names if n not in theirs]
        lines = []
        if ours:  # a noqa comment holds for both lines, any other goes with the last
            lines.append(wrap(indent, "minimal_loramoe", ours, comment if "noqa" in comment else ""))
        lines.append(wrap(indent, "minimal_loramoe.lab", theirs, comment))
        return "\n".join(lines)

    return pattern.sub(fix, text)


def wrap(indent, module, names, comment) -> str:
    line = import_lines(indent, module, names, comment)
    if len(line) <= 120:
        return line
    head = f"{indent}from {module} import ("
    out, cur = [], head
    for i, n in enumerate(names):
        piece = n + ("," if i < len(names) - 1 else ")")
        if len(cur) + len(piece) + 1 > 120:
            out.append(cur.rstrip())
            cur = indent + " " * (len(head) - len(indent))
        cur += piece + " "
    out.append(cur.rstrip() + comment)
    return "\n".join(out)


def rewrite_text(text: str, lab: set) -> str:
    alt = "|".join(sorted(lab, key=len, reverse=True))
    text = split_absolute_imports(text, lab)
    text = re.sub(rf"\bminimal_loramoe\.({alt})(?![\w])", r"minimal_loramoe.lab.\1", text)
    text = re.sub(rf"\bminimal_loramoe/({alt})\.py\b", r"minimal_loramoe/lab/\1.py", text)
    text = re.sub(rf"""(["']minimal_loramoe["']\s*/\s*)(["'])({alt})\.py\2""", r"\1\2lab\2 / \2\3.py\2", text)
    return text


def rewrite_relative(text: str, lab: set) -> str:
    """In a laboratory module: the method is one level up."""
    def one(m):
        return f"{m[1]}from ..{m[2]}" if m[2] not in lab else m[0]
    text = re.sub(r"^([ \t]*)from \.(\w+)", one, text, flags=re.M)

    def names(m):
        indent, body = m[1], m[2]
        if "(" in body:
            raise SystemExit(f"move_lab: a parenthesized 'from . import (...)' needs a hand: {m[0]!r}")
        items, comment = names_of(body)
        theirs = [n for n in items if n.split(" as ")[0].strip() in lab]
        ours = [n for n in items if n not in theirs]
        lines = ([import_lines(indent, "..", ours, comment if "noqa" in comment or not theirs else "")]
                 if ours else []) + \
            ([import_lines(indent, ".", theirs, comment)] if theirs else [])
        return "\n".join(lines)
    return re.sub(r"^([ \t]*)from \. import ([^\n]*)$", names, text, flags=re.M)


def notebook(path: Path, lab: set) -> str | None:
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    if json.dumps(nb, indent=1, ensure_ascii=False) + "\n" != raw:
        raise SystemExit(f"move_lab: {path} is not in Jupyter's format (indent 1); refusing to rewrite it")
    changed = False
    for cell in nb["cells"]:
        src = cell["source"]
        text = "".join(src) if isinstance(src, list) else src
        new = rewrite_text(text, lab)
        if new != text:
            cell["source"] = new.splitlines(keepends=True) if isinstance(src, list) else new
            changed = True
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n" if changed else None


def tracked_text_files():
    for rel in git("ls-files").splitlines():
        path = ROOT / rel
        if rel.startswith(SKIP_PREFIXES) or rel in SKIP_FILES or path.is_symlink() or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or rel in TEXT_NAMES:
            yield rel, path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    if not (PACKAGE / "__init__.py").is_file():
        raise SystemExit("move_lab: run it in the root of a checkout (minimal_loramoe/ not found)")
    mods = lab_modules()
    lab = set(mods)
    to_move = [m for m in mods if (PACKAGE / f"{m}.py").is_file()]
    print(f"laboratory: {len(mods)} modules; to move: {to_move or 'none'}")
    if args.dry_run:
        return
    LAB.mkdir(exist_ok=True)
    for m in to_move:
        if (LAB / f"{m}.py").exists():
            raise SystemExit(f"move_lab: both minimal_loramoe/{m}.py and lab/{m}.py exist")
        git("mv", f"minimal_loramoe/{m}.py", f"minimal_loramoe/lab/{m}.py")
    init = LAB / "__init__.py"
    init.write_text(lab_init(mods), encoding="utf-8")
    git("add", "minimal_loramoe/lab/__init__.py")
    changed = []
    for rel, path in tracked_text_files():
        if path.suffix == ".ipynb":
            new = notebook(path, lab)
            if new is not None:
                path.write_text(new, encoding="utf-8")
                changed.append(rel)
            continue
        text = path.read_text(encoding="utf-8")
        new = rewrite_text(text, lab)
        if path.parent == LAB and path.suffix == ".py":
            new = rewrite_relative(new, lab)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(rel)
    print(f"rewritten: {len(changed)} files: " + " ".join(changed))


if __name__ == "__main__":
    sys.exit(main())
