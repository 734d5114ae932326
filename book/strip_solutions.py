"""Write copies of chapter notebooks without the exercise solutions, to hand out to students.

Removes every solution (a Markdown cell holding a ``{solution}`` directive, and everything from a
``{solution-start}`` cell to its ``{solution-end}`` cell, code cells included) and clears all outputs, so the
handout is also free of the answers the saved outputs would show.

    python book/strip_solutions.py notebooks/04_*.ipynb --out handouts/
"""
import argparse
import re
import sys
from pathlib import Path

import nbformat

# Directives may be fenced with backticks or, with the colon_fence extension, with colons (:::{solution}).
START = re.compile(r"^(?:```+|:::+)\{solution-start\}", re.M)
END = re.compile(r"^(?:```+|:::+)\{solution-end\}", re.M)


def _drop_solution_blocks(src: str) -> tuple[str, int]:
    """Remove every ```{solution} ... ``` block from a Markdown source."""
    pattern = re.compile(r"^(```+|:::+)\{solution\}.*?^\1[ \t]*$\n?", re.M | re.S)
    return pattern.sub("", src).strip(), len(pattern.findall(src))


def strip(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """Return the notebook without solutions and outputs, and how many solutions were removed."""
    cells, inside, removed = [], False, 0

    def keep_markdown(src: str) -> None:
        nonlocal removed
        src, n = _drop_solution_blocks(src)
        removed += n
        if src:
            cells.append(nbformat.v4.new_markdown_cell(src))

    for cell in nb.cells:
        src = cell.source if cell.cell_type == "markdown" else ""
        if inside:  # inside a gated solution: drop cells up to {solution-end}, keep what follows it
            if m := END.search(src):
                inside = False
                keep_markdown(src[m.end():].split("\n", 2)[-1] if src[m.end():].count("\n") >= 2 else "")
            continue
        if m := START.search(src):
            removed += 1
            keep_markdown(src[:m.start()])
            if end := END.search(src, m.end()):  # start and end in the same cell
                keep_markdown(src[end.end():].split("\n", 2)[-1] if src[end.end():].count("\n") >= 2 else "")
            else:
                inside = True
            continue
        if cell.cell_type == "markdown":
            keep_markdown(src)
            continue
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
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
