"""Check that every chapter notebook in the book follows the book's rules, before the book is built.

For each notebook that book/_toc.yml enables (or each notebook given on the command line):

- it was run top to bottom and saved with its outputs: every non-empty code cell has an execution count, the
  counts are 1, 2, 3, ... in order, and no cell saved an error. (CI re-executes the notebooks with nbval and
  compares the outputs; the book renders the saved ones, so they must come from one clean run.)
- it opens the same way as every chapter: the first code cell is exactly the setup cell (on Colab, one ``%pip
  install`` of the package from the repository named in _config.yml; elsewhere nothing) and the first Markdown
  cell holds the chapter's "Open in Colab" link, both as ``book/set_repository.py`` writes them;
- no output nbval compares strictly names the device (the CPU in CI, the GPU on Colab): after
  notebooks/sanitize.cfg, no untagged output says ``device: cpu`` or ``device(type='cuda')``;
- it ends with exercises: the last ``##`` section (or the one before a closing ``## Summary``) is about exercises, there are at least two, their titles
  carry a difficulty (★, ★★ or ★★★) with at least two different levels, and every exercise has a solution
  folded away with ``:class: dropdown``;
- it loads nothing from the network when rendered: no ipywidgets outputs (use ``from tqdm import tqdm``, not
  ``tqdm.auto``), no images or scripts from http(s) URLs in Markdown or HTML outputs;
- nbval checks all of it: no cell is skipped (``nbval-skip`` tag, ``# NBVAL_SKIP``), and no rule of
  notebooks/sanitize.cfg blanks plain numbers (numbers that come out of training are handled cell by cell with
  the ``nbval-ignore-output`` tag and an assert; book/README.md, "Which outputs nbval compares, and why").

Teaching notes (printed; they fail the check only with ``--strict``):

- every plot has a caption: the Markdown cell right after a code cell that shows an image starts with
  ``**Figure.**`` (visible in Jupyter and Colab as well as in the book);
- every ★★★ solution runs: its solution is a ``{solution-start}``...``{solution-end}`` block with at least one
  code cell (an open question still gets a runnable first step), not prose only;
- solution code is not hidden a second time: no ``hide-input``/``hide-cell`` tag inside a folded solution;
- the opening cell says how long the chapter takes (``Time: ...``).

    python book/lint_chapters.py                   # every enabled chapter
    python book/lint_chapters.py --strict notebooks/04_*.ipynb
"""
import json
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import set_repository  # noqa: E402  (book/set_repository.py: the setup cell and Colab link every chapter has)

BOOK = Path(__file__).resolve().parent
TOC = BOOK / "_toc.yml"
CONFIG = BOOK / "_config.yml"

# Directives may be fenced with backticks or, with the colon_fence extension, with colons (:::{exercise}).
EXERCISE = re.compile(r"^(?:```+|:::+)\{exercise(?:-start)?\}[ \t]*(?P<title>[^\n]*)\n(?P<opts>(?::[^\n:][^\n]*\n)*)", re.M)
SOLUTION = re.compile(r"^(?:```+|:::+)\{solution(?:-start)?\}[ \t]*(?P<label>\S+)[^\n]*\n(?P<opts>(?::[^\n:][^\n]*\n)*)", re.M)
LABEL = re.compile(r"^:label:\s*(\S+)", re.M)
STARS = re.compile(r"^(★{1,3})(?!★)")
HEADING2 = re.compile(r"^##\s+(.*)$", re.M)
EXTERNAL_MD = re.compile(r"!\[[^\]]*\]\(\s*(https?:)?//|<(img|script|iframe)[^>]*\ssrc=[\"']?(https?:)?//", re.I)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
SANITIZE = BOOK.parent / "notebooks" / "sanitize.cfg"
SKIP_COMMENT = re.compile(r"^\s*#\s*(NBVAL_SKIP|PYTEST_VALIDATE_SKIP)\s*$", re.M)
IGNORE_COMMENT = re.compile(r"^\s*#\s*NBVAL_IGNORE_OUTPUT\s*$", re.M)
DEVICE_NAMED = re.compile(r"device\W{1,3}(?:type=\W?)?(cpu|cuda|mps|xpu)\b")
PLAIN_NUMBERS = ["0.913", "knowledge 0.955", "96 %", "440,960 parameters", "-0.024", "1e-03", "33/54"]


def enabled_notebooks() -> list[Path]:
    toc = yaml.safe_load(TOC.read_text())
    files = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return [BOOK / f"{f}.ipynb" for f in files if (BOOK / f"{f}.ipynb").is_file()]


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


HIDDEN_TAGS = {"hide-input", "hide-cell"}
CAPTION = re.compile(r"^\s*\*\*Figure\.\*\*")
SOLUTION_START = re.compile(r"^(?:```+|:::+)\{solution-start\}[ \t]*(\S+)", re.M)
SOLUTION_END = re.compile(r"^(?:```+|:::+)\{solution-end\}", re.M)


def _shows_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})
               for o in cell.get("outputs", []))


def teaching_notes(cells, exercises) -> list[str]:
    """The softer rules of a good chapter (see the module docstring)."""
    notes = []
    code_no = 0
    for i, c in enumerate(cells):
        if c["cell_type"] != "code" or not _source(c).strip():
            continue
        code_no += 1
        if _shows_image(c):
            nxt = cells[i + 1] if i + 1 < len(cells) else None
            if nxt is None or nxt["cell_type"] != "markdown" or not CAPTION.match(_source(nxt)):
                notes.append(f"code cell {code_no} shows a plot without a caption: start the next Markdown cell "
                             "with '**Figure.**' and say what to read off it")
    # which code cells belong to which gated solution
    solution_code, open_label = {}, None
    for c in cells:
        src = _source(c)
        if c["cell_type"] == "markdown":
            for m in re.finditer(f"{SOLUTION_START.pattern}|{SOLUTION_END.pattern}", src, re.M):
                open_label = m.group(1) if m.group(1) else None
                if open_label:
                    solution_code.setdefault(open_label, [])
        elif open_label is not None and src.strip():
            solution_code[open_label].append(c)
    for label, title in exercises:
        if title.startswith("★★★") and not solution_code.get(label):
            notes.append(f"the ★★★ exercise {label!r} has a prose-only solution: give it runnable code "
                         "({solution-start} ... {solution-end} with a code cell)")
    for label, cs in solution_code.items():
        if any(HIDDEN_TAGS & set(c.get("metadata", {}).get("tags", [])) for c in cs):
            notes.append(f"the solution of {label!r} tags its code hide-input/hide-cell: it is folded already")
    intro = next((_source(c) for c in cells if c["cell_type"] == "markdown"), "")
    if "Time:" not in intro:
        notes.append("the opening cell does not say how long the chapter takes to run ('Time: about N min ...')")
    return notes


def lint(path: Path, repo_url: str) -> tuple[list[str], list[str]]:
    """(problems, teaching notes) of one chapter notebook."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb.get("cells", [])
    code = [c for c in cells if c["cell_type"] == "code" and _source(c).strip()]
    problems = []

    # 1. one clean top-to-bottom run, outputs saved
    counts = [c.get("execution_count") for c in code]
    if any(n is None for n in counts):
        problems.append(f"{counts.count(None)} code cell(s) never executed: run the notebook top to bottom and save")
    elif counts != list(range(1, len(counts) + 1)):
        problems.append(f"execution counts {counts[:12]}{'...' if len(counts) > 12 else ''} are not 1, 2, 3, ...: "
                        "restart the kernel, run all, save")
    if code and not any(c.get("outputs") for c in code):
        problems.append("no saved outputs at all (stripped?): the book shows the saved outputs")
    for i, c in enumerate(code, 1):
        for out in c.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"code cell {i} saved an error: {out.get('ename')}: {out.get('evalue', '')[:80]}")
            data = out.get("data", {})
            if WIDGET_MIME in data:
                problems.append(f"code cell {i} has an ipywidgets output (tqdm.auto?): it cannot render offline; "
                                "use `from tqdm import tqdm`")
            html = "".join(data.get("text/html", "")) if isinstance(data.get("text/html"), list) else \
                data.get("text/html", "")
            if EXTERNAL_MD.search(html or ""):
                problems.append(f"code cell {i} outputs HTML that loads from the network")

    # nbval runs every cell (a skipped cell's asserts never run)
    for i, c in enumerate(code, 1):
        if "nbval-skip" in c.get("metadata", {}).get("tags", []) or SKIP_COMMENT.search(_source(c)):
            problems.append(f"code cell {i} is skipped by nbval: its asserts never run in CI; tag a cell whose "
                            "printed numbers come out of training nbval-ignore-output instead")
        if "nbval-ignore-output" in c.get("metadata", {}).get("tags", []) and IGNORE_COMMENT.search(_source(c)):
            problems.append(f"code cell {i} has both the nbval-ignore-output tag and # NBVAL_IGNORE_OUTPUT "
                            "(nbval warns): keep one")

    # 2. the same first cell in every chapter, and the Colab link under the title
    url, branch = set_repository.repository()
    first = _source(code[0]) if code else ""
    if first != set_repository.setup_cell(url, branch):
        problems.append("the first code cell is not the book's setup cell (one `%pip install` on Colab): run "
                        "`python book/set_repository.py --notebooks`; see book/README.md")
    intro = next((_source(c) for c in cells if c["cell_type"] == "markdown"), "")
    if set_repository.colab_link(path.name, url, branch) not in intro:
        problems.append("the first Markdown cell lacks this chapter's \"Open in Colab\" link: run "
                        "`python book/set_repository.py --notebooks`")
    sanitize = _sanitizers()
    for i, c in enumerate(code, 1):
        if "nbval-ignore-output" in c.get("metadata", {}).get("tags", []) or IGNORE_COMMENT.search(_source(c)):
            continue
        for out in c.get("outputs", []):
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            for regex, replace in sanitize:
                text = regex.sub(replace, text)
            if DEVICE_NAMED.search(text):
                problems.append(f"code cell {i} prints the device in an output nbval compares: it differs on a "
                                f"GPU ({DEVICE_NAMED.search(text).group(0)!r})")

    # 3. ends with graded exercises, solutions folded away
    markdown = "\n\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    headings = HEADING2.findall(markdown)
    # The chapter ends with its exercises, optionally followed by a short summary.
    tail = headings[-2:] if headings and "summary" in headings[-1].lower() else headings[-1:]
    if not tail or "exercise" not in tail[0].lower():
        problems.append(f"the exercises must be the last '## ' section, or the one before a closing '## Summary' "
                        f"(sections end with {headings[-2:]!r})")
    exercises = list(EXERCISE.finditer(markdown))
    if not exercises:
        problems.append("no exercises: write them with the {exercise} directive and fold each solution with "
                        "{solution} or {solution-start} ... {solution-end} (see book/README.md)")
    labels = [LABEL.search(m["opts"]).group(1) for m in exercises if LABEL.search(m["opts"])]
    if exercises and len(exercises) < 2:
        problems.append(f"{len(exercises)} exercise(s): write at least two, of different difficulty")
    if len(labels) != len(exercises):
        problems.append("every exercise needs a :label: (its solution refers to it)")
    levels = {STARS.match(m["title"].strip()).group(1) for m in exercises if STARS.match(m["title"].strip())}
    unmarked = [m["title"].strip() for m in exercises if not STARS.match(m["title"].strip())]
    if unmarked:
        problems.append(f"exercise titles must start with ★, ★★ or ★★★: {unmarked}")
    if exercises and len(levels) < 2:
        problems.append("the exercises must span at least two difficulty levels (★, ★★, ★★★)")
    solutions = {m["label"]: m["opts"] for m in SOLUTION.finditer(markdown)}
    for label in labels:
        if label not in solutions:
            problems.append(f"exercise {label!r} has no solution")
        elif not re.search(r"^:class:.*\bdropdown\b", solutions[label], re.M):
            problems.append(f"the solution of {label!r} is not folded away: add ':class: dropdown'")

    # 4. nothing from the network in the Markdown
    if EXTERNAL_MD.search(markdown):
        problems.append("a Markdown cell shows an image or script from an http(s) URL (Colab badges included): "
                        "the Colab link is a plain Markdown link; put images in the repository")
    titled = [(LABEL.search(m["opts"]).group(1), m["title"].strip()) for m in exercises if LABEL.search(m["opts"])]
    return problems, teaching_notes(cells, titled)


def lint_sanitize(path: Path = SANITIZE) -> list[str]:
    """No sanitize rule may blank plain numbers: that would hide every number of every notebook from nbval."""
    import configparser
    if not path.is_file():
        return []
    cfg = configparser.ConfigParser()
    cfg.read(path)
    problems = []
    for name in cfg.sections():
        regex = re.compile(cfg[name].get("regex", ""))
        hits = [text for text in PLAIN_NUMBERS if regex.search(text)]
        if hits:
            problems.append(f"{path.name} [{name}] also matches plain numbers such as {hits[0]!r}: sanitize only "
                            "what changes on every run (times, addresses); tag training outputs per cell")
    return problems


def _sanitizers(path: Path = SANITIZE) -> list:
    """The (regex, replacement) pairs of notebooks/sanitize.cfg, as nbval applies them."""
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(path)
    return [(re.compile(cfg[s]["regex"]), cfg[s].get("replace", "")) for s in cfg.sections()]


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    strict = "--strict" in args
    args = [a for a in args if a != "--strict"]
    repo_url = yaml.safe_load(CONFIG.read_text())["repository"]["url"].rstrip("/")
    paths = [Path(a) for a in args] if args else enabled_notebooks()
    failed = noted = 0
    for p in lint_sanitize():
        failed += 1
        print(f"lint_chapters: {p}")
    for path in paths:
        problems, notes = lint(path, repo_url)
        failed += bool(problems or (strict and notes))
        noted += bool(notes)
        for p in problems:
            print(f"lint_chapters: {path.name}: {p}")
        for n in notes:
            print(f"lint_chapters: {path.name}: {'' if strict else 'note: '}{n}")
    print(f"lint_chapters: {len(paths)} notebook(s), {failed} with problems, {noted} with teaching notes"
          + ("" if strict else " (notes fail only with --strict)") + (" -- FAILED" if failed else " -- ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
