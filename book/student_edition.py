"""The student edition, from one command: the chapters without their solutions, to hand out.

    python book/student_edition.py            # student/notebooks/*.ipynb and student/student-notebooks.zip
    python book/student_edition.py --book     # ... and the book with the solutions removed:
                                              #     book/_build/student/_build/html/index.html

The notebooks (``student/notebooks/``) are the chapters with every solution removed (``book/strip_solutions.py``),
all outputs cleared, and an empty code cell under each exercise for the student's answer. They are made to be read
in Jupyter or on Colab, which do not render the book's MyST markup, so that markup becomes plain Markdown: an
exercise directive a bold "Exercise" line, a glossary term its word, a citation "Dou et al. (2024)". The first
cell still installs the package on Colab; the "Open in Colab" link (which opens the edition *with* solutions) is
replaced by a line on how to open the handout.

The book (``--book``) is built from a copy of the book whose chapters are stripped of their solutions but keep
their saved outputs, with sphinx-exercise's ``hide_solutions`` on and no Colab badges (they would open the
solutions). ``book/teaching.md`` says how a teacher hands both out; CI builds both (``.ci/run``).
"""
import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import yaml

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
sys.path.insert(0, str(BOOK))
import set_repository  # noqa: E402
import strip_solutions  # noqa: E402

EXERCISE = re.compile(r"^(?P<fence>```+|:::+)\{exercise\}[ \t]*(?P<title>[^\n]*)\n(?P<opts>(?::[^\n]*\n)*)"
                      r"(?P<body>.*?)^(?P=fence)[ \t]*$\n?", re.M | re.S)
ROLE = re.compile(r"\{(?P<role>term|cite|cite:p|cite:t|ref|numref|doc)\}`(?P<text>[^`]*)`")
BIB_ENTRY = re.compile(r"@\w+\{(?P<key>[^,\s]+),(?P<body>.*?)\n\}", re.S)
HANDOUT_NOTE = ("*Student edition: open this notebook in Jupyter, or on Colab with File → Upload notebook. Its "
                "first cell installs what it needs on Colab.*")


def bibliography(path: Path = BOOK / "references.bib") -> dict:
    """``{key: (short author list, year)}`` from references.bib, e.g. ``("Dou et al.", "2024")``."""
    refs = {}
    for m in BIB_ENTRY.finditer(path.read_text(encoding="utf-8")):
        fields = dict(re.findall(r"(\w+)\s*=\s*\{((?:[^{}]|\{[^{}]*\})*)\}", m["body"]))
        authors = [a.split(",")[0].strip().strip("{}") for a in re.split(r"\s+and\s+", " ".join(
            fields.get("author", "Anonymous").split()))]
        short = authors[0] if len(authors) == 1 else (
            f"{authors[0]} and {authors[1]}" if len(authors) == 2 else f"{authors[0]} et al.")
        refs[m["key"]] = (short, fields.get("year", "n.d.").strip())
    return refs


def plain_markdown(text: str, refs: dict) -> str:
    """The book's MyST markup that Jupyter and Colab show as raw text, as plain Markdown."""
    def exercise(m):
        body = m["body"].strip()
        return f"**Exercise {m['title'].strip()}**\n\n{body}\n"

    def role(m):
        kind, inner = m["role"], m["text"]
        if kind.startswith("cite"):
            cites = [refs.get(k.strip(), (k.strip(), "")) for k in inner.split(",")]
            if kind == "cite:t":
                return "; ".join(f"{a} ({y})" for a, y in cites)
            return "(" + "; ".join(f"{a}, {y}" for a, y in cites) + ")"
        named = re.match(r"(.*?)\s*<[^>]*>$", inner, re.S)  # {term}`text <Target>`
        return named.group(1) if named else inner

    return ROLE.sub(role, EXERCISE.sub(exercise, text))


def student_notebook(path: Path, refs: dict) -> tuple[nbformat.NotebookNode, int]:
    """One chapter as a handout: (notebook, number of exercises given an answer cell)."""
    nb, _ = strip_solutions.strip(nbformat.read(path, as_version=4))
    cells, n = [], 0
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            cells.append(cell)
            continue
        source = set_repository.COLAB_LINK.sub(HANDOUT_NOTE, cell.source)
        pos = 0
        for m in EXERCISE.finditer(source):  # each exercise in its own Markdown cell, an answer cell under it
            before = source[pos:m.start()].strip()
            if before:
                cells.append(nbformat.v4.new_markdown_cell(plain_markdown(before, refs)))
            cells.append(nbformat.v4.new_markdown_cell(plain_markdown(m.group(0), refs).strip()))
            cells.append(nbformat.v4.new_code_cell("# your answer\n"))
            pos, n = m.end(), n + 1
        rest = source[pos:].strip()
        if rest:
            cells.append(nbformat.v4.new_markdown_cell(plain_markdown(rest, refs)))
    nb.cells = cells
    nbformat.validator.normalize(nb) if hasattr(nbformat.validator, "normalize") else None
    return nb, n


def chapters() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def write_notebooks(out: Path) -> Path:
    refs = bibliography()
    folder = out / "notebooks"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copytree(ROOT / "notebooks" / "images", folder / "images")
    for path in chapters():
        nb, n = student_notebook(path, refs)
        nbformat.write(nb, folder / path.name)
        print(f"student_edition: {path.name}: {n} exercise(s), solutions removed -> {folder / path.name}")
    archive = out / "student-notebooks.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, Path("minimal-loramoe-student") / f.relative_to(folder))
    print(f"student_edition: {archive} ({archive.stat().st_size // 1024} KiB)")
    return folder


def build_book(strict: bool = True) -> Path:
    """Build the book with the solutions removed into book/_build/student/_build/html."""
    src = ROOT / "_student_book"  # beside book/, so that the pages' ../minimal_loramoe/... includes resolve
    if src.exists():
        shutil.rmtree(src)
    ignore = shutil.ignore_patterns("_build", "notebooks", "*.py", "README.md")
    shutil.copytree(BOOK, src, ignore=ignore)
    shutil.rmtree(src / "_ext")
    shutil.copytree(BOOK / "_ext", src / "_ext")  # the book's Sphinx extensions (*.py, skipped above)
    (src / "notebooks").mkdir()
    shutil.copytree(ROOT / "notebooks" / "images", src / "notebooks" / "images")
    for path in chapters():  # solutions removed, the chapter's saved outputs kept
        nb, _ = strip_solutions.strip(nbformat.read(path, as_version=4), keep_outputs=True)
        for cell in nb.cells:  # the Colab link would open the edition with solutions
            if cell.cell_type == "markdown":
                cell.source = set_repository.COLAB_LINK.sub("", cell.source).replace("\n\n\n", "\n\n")
        nbformat.write(nb, src / "notebooks" / path.name)
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    config["title"] = f"{config['title']} (student edition)"
    config.setdefault("sphinx", {}).setdefault("config", {}).update(hide_solutions=True, colab_badges=False)
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    out = BOOK / "_build" / "student"
    cmd = ["jupyter-book", "build", str(src), "--path-output", str(out), "--all"]
    if strict:
        cmd += ["-n", "-W", "--keep-going"]
    subprocess.run(cmd, check=True)
    html = out / "_build" / "html"
    print(f"student_edition: book with the solutions removed -> {html / 'index.html'}")
    return html


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "student", help="folder for the notebooks (default: student/)")
    p.add_argument("--book", action="store_true", help="also build the student edition of the book")
    args = p.parse_args(argv)
    write_notebooks(args.out)
    if args.book:
        build_book()
    return 0


if __name__ == "__main__":
    sys.exit(main())
