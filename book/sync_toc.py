"""Keep book/_toc.yml in step with the files that exist, so the book builds while chapters are still missing.

_toc.yml lists every planned page. A line whose file does not exist yet is commented out
(``      # - file: notebooks/05_loramoe``); this script turns such lines on when the file lands and off when it
goes away. Chapter notebooks are matched by their two-digit number, so if ``notebooks/05_mixture.ipynb``
lands instead of the planned ``05_loramoe``, the line is renamed. A part whose chapters are all disabled is
disabled as a whole (an empty part is not valid in the toc).

    python book/sync_toc.py            # rewrite book/_toc.yml and report what changed
    python book/sync_toc.py --check    # change nothing; exit 1 if _toc.yml is out of step (CI)

--check also fails when a ``notebooks/NN_*.ipynb`` exists that no line of _toc.yml names: every chapter
notebook must be in the book (add one ``- file: notebooks/NN_name`` line under "Chapters").
"""
import argparse
import re
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent
TOC = BOOK / "_toc.yml"
NOTEBOOKS = BOOK.parent / "notebooks"
SUFFIXES = (".ipynb", ".md")

# A managed toc line: indentation, optional "# " (disabled), then a toc key. Free comments sit in column 0.
LINE = re.compile(r"^(?P<indent> +)(?P<off># )?(?P<body>(- )?(file|caption|numbered|chapters|sections)\b.*)$")
FILE = re.compile(r"- file: (?P<path>\S+)")
CHAPTER = re.compile(r"^notebooks/(?P<num>\d\d)_")


def chapter_notebooks() -> dict[str, str]:
    """{'05': 'notebooks/05_loramoe', ...} for every chapter notebook on disk."""
    found = {}
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        num = nb.name[:2]
        if num in found:
            raise SystemExit(f"sync_toc: two notebooks numbered {num} in notebooks/: {found[num]} and {nb.stem}")
        found[num] = f"notebooks/{nb.stem}"
    return found


def exists(doc: str) -> bool:
    return any((BOOK / (doc + s)).is_file() for s in SUFFIXES)


def sync(lines: list[str]) -> tuple[list[str], list[str]]:
    """Return the synced lines and human-readable notes on what changed."""
    on_disk = chapter_notebooks()
    out, notes = [], []
    for line in lines:
        m = LINE.match(line)
        f = FILE.match(m["body"]) if m else None
        if not f:
            out.append(line)
            continue
        doc, enabled = f["path"], m["off"] is None
        c = CHAPTER.match(doc)
        if c and c["num"] in on_disk and on_disk[c["num"]] != doc:
            notes.append(f"renamed {doc} -> {on_disk[c['num']]}")
            doc = on_disk[c["num"]]
        want = exists(doc)
        if want != enabled:
            notes.append(("enabled " if want else "disabled (file missing) ") + doc)
        body = m["body"][: f.start("path")] + doc + m["body"][f.end("path"):]
        out.append(f"{m['indent']}{'' if want else '# '}{body}")
    return _sync_parts(out, notes), notes


def _sync_parts(lines: list[str], notes: list[str]) -> list[str]:
    """Disable a part (its caption/numbered/chapters lines) when none of its entries is enabled, and re-enable it."""
    starts = [i for i, l in enumerate(lines) if (m := LINE.match(l)) and m["body"].startswith("- caption:")]
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        block = range(start, end)
        entries = [i for i in block if (m := LINE.match(lines[i])) and FILE.match(m["body"])]
        active = any(LINE.match(lines[i])["off"] is None for i in entries)
        for i in block:
            m = LINE.match(lines[i])
            if m is None or i in entries:
                continue
            if active and m["off"]:
                lines[i] = m["indent"] + m["body"]
            elif not active and not m["off"]:
                lines[i] = f"{m['indent']}# {m['body']}"
                if m["body"].startswith("- caption:"):
                    notes.append(f"disabled empty part: {m['body']}")
    return lines


def orphans(lines: list[str]) -> list[str]:
    """Chapter notebooks on disk that no toc line (enabled or not) names."""
    named = {FILE.match(m["body"])["path"] for l in lines if (m := LINE.match(l)) and FILE.match(m["body"])}
    return [doc for doc in chapter_notebooks().values() if doc not in named]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if _toc.yml is out of step")
    args = p.parse_args(argv)
    old = TOC.read_text().splitlines()
    new, notes = sync(old)
    missing = orphans(new)
    for note in notes:
        print(f"sync_toc: {note}")
    for doc in missing:
        print(f"sync_toc: {doc}.ipynb is not in book/_toc.yml: add the line '      - file: {doc}' under Chapters")
    if args.check:
        if notes:
            print("sync_toc: book/_toc.yml is out of step with notebooks/: run  python book/sync_toc.py")
        return 1 if (notes or missing) else 0
    if new != old:
        TOC.write_text("\n".join(new) + "\n")
        print("sync_toc: wrote book/_toc.yml")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
