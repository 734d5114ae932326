"""Write copies of chapter notebooks without the exercise solutions, to hand out to students.

Removes every solution and clears all outputs, so the handout is also free of the answers the saved outputs
would show. A solution is

- a ``{solution}`` directive block in a Markdown cell (fenced with backticks or colons);
- everything from a ``{solution-start}`` directive to its ``{solution-end}``, code cells included;
- in the older list style (a starred list of exercises under ``## Exercises``), every code cell after that heading
  tagged ``hide-input`` or ``hide-cell``: the book folded those away as the solutions.

    python book/strip_solutions.py notebooks/04_*.ipynb --out handouts/
"""
import argparse
import re
import sys
from pathlib import Path

import nbformat

# Directives may be fenced with backticks or, with the colon_fence extension, with colons (:::{solution}).
START = re.compile(r"^(?:```+|:::+)\{solution-start\}", re.M)
# a whole {solution-end} directive, up to its closing fence (the same fence that opened it)
END = re.compile(r"^(```+|:::+)\{solution-end\}.*?^\1[ \t]*$\n?", re.M | re.S)
BLOCK = re.compile(r"^(```+|:::+)\{solution\}.*?^\1[ \t]*$\n?", re.M | re.S)
EXERCISES = re.compile(r"^##\s+Exercises", re.M)
HIDDEN_TAGS = {"hide-input", "hide-cell"}


def _strip_markdown(src: str, inside: bool) -> tuple[str, bool, int]:
    """Walk one Markdown source. Returns (the text outside solutions, whether a gated solution is still open at
    the end of the cell, how many solutions started or were dropped here).

    One cell may close a solution, hold the next exercise and open its solution, in that order.
    """
    kept, removed, pos = [], 0, 0
    while True:
        if inside:
            end = END.search(src, pos)
            if end is None:  # the solution goes on in the next cells
                break
            pos, inside = end.end(), False
        else:
            start = START.search(src, pos)
            kept.append(src[pos:start.start() if start else len(src)])
            if start is None:
                break
            pos, inside, removed = start.end(), True, removed + 1
    text = "".join(kept)
    removed += len(BLOCK.findall(text))
    return BLOCK.sub("", text).strip(), inside, removed


def strip(nb: nbformat.NotebookNode, keep_outputs: bool = False) -> tuple[nbformat.NotebookNode, int]:
    """Return the notebook without solutions (and without outputs, unless ``keep_outputs``: the student edition of
    the book shows the chapters' saved outputs), and how many solutions were removed."""
    cells, inside, removed, in_exercises = [], False, 0, False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            in_exercises = in_exercises or bool(EXERCISES.search(cell.source))
            text, inside, n = _strip_markdown(cell.source, inside)
            removed += n
            if text:
                cells.append(nbformat.v4.new_markdown_cell(text))
            continue
        if inside:  # a code cell of a gated solution
            continue
        if cell.cell_type == "code":
            if in_exercises and HIDDEN_TAGS & set(cell.get("metadata", {}).get("tags", [])):
                removed += 1  # the list style's folded solution cell
                continue
            if not keep_outputs:
                cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    if inside:
        raise ValueError("a {solution-start} has no {solution-end}: the rest of the notebook would be dropped")
    nb.cells = cells
    return nb, removed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for the handouts")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.notebooks:
        if args.out.resolve() == path.parent.resolve():
            raise ValueError(f"--out must differ from the notebook's folder, got {args.out}")
        nb, removed = strip(nbformat.read(path, as_version=4))
        nbformat.write(nb, args.out / path.name)
        print(f"strip_solutions: {path.name}: removed {removed} solution(s) -> {args.out / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
