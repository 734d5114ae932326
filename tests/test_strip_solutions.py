"""book/strip_solutions.py: a handout keeps every exercise and loses every solution, in every style the book uses."""
import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("strip_solutions", ROOT / "book" / "strip_solutions.py")
strip_solutions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strip_solutions)

md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
SECRET = "SOLUTION_TEXT"  # every solution below contains it; no exercise does


def _notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    for c in nb.cells:
        if c.cell_type == "code":
            c.execution_count = 1
            c.outputs = [nbformat.v4.new_output("stream", name="stdout", text="printed " + SECRET)]
    return nb


def _text(nb):
    return "\n".join(c.source for c in nb.cells)


def test_gated_block_and_colon_solutions_are_removed():
    nb = _notebook(
        md("# Chapter\n\nSome text."),
        code("x = 1  # the chapter's own code stays"),
        md("## Exercises\n\n```{exercise} ★ One\n:label: ex-t-one\n\nQuestion one?\n```"),
        md("```{solution-start} ex-t-one\n:class: dropdown\n```\n\nProse " + SECRET),
        code("print('" + SECRET + "')"),
        # one cell closes a solution, holds the next exercise and opens its solution (chapters 1 and 2 do this)
        md("```{solution-end}\n```\n\n```{exercise} ★★ Two\n:label: ex-t-two\n\nQuestion two?\n```\n\n"
           "```{solution-start} ex-t-two\n:class: dropdown\n```\n\n" + SECRET),
        code("y = '" + SECRET + "'"),
        md("More " + SECRET + "\n\n```{solution-end}\n```"),
        md("````{exercise} ★★★ Three\n:label: ex-t-three\n\nQuestion three?\n````\n\n"
           "````{solution} ex-t-three\n:class: dropdown\n\nA block " + SECRET + "\n````\n\nText after."),
        md(":::{exercise} ★ Four\n:label: ex-t-four\n\nQuestion four?\n:::\n\n"
           ":::{solution} ex-t-four\n:class: dropdown\n\n" + SECRET + "\n:::"),
    )
    out, removed = strip_solutions.strip(nb)
    text = _text(out)
    assert removed == 4
    assert SECRET not in text
    for q in ("Question one?", "Question two?", "Question three?", "Question four?", "Text after.", "Some text."):
        assert q in text
    kept_code = [c for c in out.cells if c.cell_type == "code"]
    assert [c.source for c in kept_code] == ["x = 1  # the chapter's own code stays"]
    assert all(c.outputs == [] and c.execution_count is None for c in kept_code)


def test_list_style_hidden_solution_cells_are_removed():
    nb = _notebook(
        md("# Chapter"),
        code("z = 2"),
        md("## Exercises\n\n1. ★ First?\n2. ★★ Second?"),
        code("# Solution 1: " + SECRET),
        code("# Solution 2: " + SECRET),
    )
    for c in nb.cells[3:]:
        c.metadata["tags"] = ["hide-input"]
    out, removed = strip_solutions.strip(nb)
    assert removed == 2 and SECRET not in json.dumps(out)
    assert [c.source for c in out.cells if c.cell_type == "code"] == ["z = 2"]


def test_unclosed_solution_is_an_error():
    nb = _notebook(md("## Exercises\n\n```{solution-start} ex-t-x\n:class: dropdown\n```"), code("1"))
    with pytest.raises(ValueError, match="solution-end"):
        strip_solutions.strip(nb)


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name)
def test_every_chapter_loses_all_its_solutions(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    exercises = len(re.findall(r"^(?:```+|:::+)\{exercise\}", "\n".join(c.source for c in nb.cells), re.M))
    assert strip_solutions.main([str(path), "--out", str(tmp_path)]) == 0
    out = nbformat.read(tmp_path / path.name, as_version=4)
    text = "\n".join(c.source for c in out.cells)
    assert not re.search(r"\{solution(-start|-end)?\}", text), "a solution directive survived"
    assert len(re.findall(r"^(?:```+|:::+)\{exercise\}", text, re.M)) == exercises, "an exercise was lost"
    assert all(not c.get("outputs") for c in out.cells if c.cell_type == "code")
    start = next(i for i, c in enumerate(out.cells) if c.cell_type == "markdown" and "## Exercises" in c.source)
    hidden = [c for c in out.cells[start:] if c.cell_type == "code"
              and {"hide-input", "hide-cell"} & set(c.metadata.get("tags", []))]
    assert not hidden, "a folded solution cell survived"
