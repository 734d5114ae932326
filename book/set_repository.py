"""Point the package, the chapters and the README at the repository named in book/_config.yml (e.g. your fork).

``repository.url`` and ``repository.branch`` in ``book/_config.yml`` are the one place the repository is named.
The book's Colab and repository buttons are built from them at build time (``book/_ext/colab_launch.py``); the
places below hold a copy, because they cannot read the config when they run or are read:

* ``minimal_loramoe/lab/urls.py`` (the installed package's copy; it derives the Colab and site addresses);
* every chapter notebook: its first code cell (the same in every chapter: on Colab, one ``%pip install`` of the
  package from the repository) and the "Open in Colab" link under its title;
* the README's address of the published book (the repository's GitHub Pages site), and the ``[project.urls]``
  of ``pyproject.toml``.

    python book/set_repository.py                # rewrite minimal_loramoe/lab/urls.py from the config
    python book/set_repository.py --notebooks    # ... and the chapters' first cell and Colab link, and the README
    python book/set_repository.py --check        # change nothing; exit 1 if a copy differs from the config

Nothing else in a notebook changes (its outputs stay as they are).
"""
import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import yaml

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
CONFIG = BOOK / "_config.yml"
URLS = ROOT / "minimal_loramoe" / "lab" / "urls.py"
README = ROOT / "README.md"
NOTEBOOKS = ROOT / "notebooks"

COLAB_LINK = re.compile(r"^\[Open in Colab\]\(https://colab\.research\.google\.com/[^)\s]*\)[ \t]*$", re.M)
SITE = re.compile(r"https://[A-Za-z0-9-]+\.github\.io/[A-Za-z0-9._-]+/")
SETUP_CELL = '''# Setup. On Colab: install this book's package (code and data) from GitHub. Elsewhere: nothing to do, the
# package is installed already (book: "Setup"). The same cell opens every chapter.
import sys

if "google.colab" in sys.modules:
    %pip install -q "{requirement}"'''


def _urls_module():
    """minimal_loramoe/lab/urls.py, loaded from its file (the package need not be installed)."""
    spec = importlib.util.spec_from_file_location("_minimal_loramoe_urls", URLS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def repository() -> tuple[str, str]:
    """(url, branch) from book/_config.yml."""
    repo = yaml.safe_load(CONFIG.read_text())["repository"]
    return repo["url"].rstrip("/").removesuffix(".git"), repo.get("branch", "main")


def setup_cell(url: str, branch: str) -> str:
    """The first code cell of every chapter."""
    return SETUP_CELL.format(requirement=_urls_module().pip_requirement(url, branch))


def colab_link(notebook: str, url: str, branch: str) -> str:
    """The Markdown line under every chapter's title."""
    return f"[Open in Colab]({_urls_module().colab_url(notebook, url, branch)})"


def rewrite_urls_py(text: str, url: str, branch: str) -> str:
    text = re.sub(r'^REPOSITORY_URL = ".*"$', f'REPOSITORY_URL = "{url}"', text, count=1, flags=re.M)
    return re.sub(r'^BRANCH = ".*"$', f'BRANCH = "{branch}"', text, count=1, flags=re.M)


def _lines(source: str) -> list[str]:
    return source.splitlines(keepends=True)


def rewrite_notebook(text: str, url: str, branch: str, name: str) -> str:
    """The raw text of chapter notebook ``name`` with its first code cell and its Colab link (inserted under the
    title if missing) made from ``url`` and ``branch``; the rest stays byte for byte."""
    nb = json.loads(text)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if code and "google.colab" in "".join(code[0]["source"]):
        code[0]["source"] = _lines(setup_cell(url, branch))
        if nb.get("nbformat_minor", 0) >= 5 and "id" not in code[0]:
            code[0]["id"] = "setup"  # nbformat 4.5 cells carry an id
    md = next((c for c in nb["cells"] if c["cell_type"] == "markdown"), None)
    if md is not None:
        source, link = "".join(md["source"]), colab_link(name, url, branch)
        if COLAB_LINK.search(source):
            source = COLAB_LINK.sub(lambda m: link, source, count=1)
        else:  # under the title line
            title, _, rest = source.partition("\n")
            source = f"{title}\n\n{link}\n" + (f"\n{rest.lstrip(chr(10))}" if rest.strip() else "")
        md["source"] = _lines(source)
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def rewrite_readme(text: str, url: str, branch: str) -> str:
    return SITE.sub(_urls_module().site_url(url), text)


def rewrite_pyproject(text: str, url: str, branch: str) -> str:
    text = re.sub(r'^(Homepage = )".*"$', lambda m: f'{m[1]}"{_urls_module().site_url(url)}"', text, flags=re.M)
    text = re.sub(r'^(Repository = )".*"$', lambda m: f'{m[1]}"{url}"', text, flags=re.M)
    return re.sub(r'^(Issues = )".*"$', lambda m: f'{m[1]}"{url}/issues"', text, flags=re.M)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--notebooks", action="store_true", help="also rewrite the chapters and the README")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a copy differs")
    args = p.parse_args(argv)
    url, branch = repository()
    targets = [(URLS, rewrite_urls_py)]
    if args.notebooks or args.check:
        targets += [(nb, lambda t, u, b, name=nb.name: rewrite_notebook(t, u, b, name))
                    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))]
        targets += [(README, rewrite_readme), (ROOT / "pyproject.toml", rewrite_pyproject)]
    stale = []
    for path, rewrite in targets:
        old = path.read_text(encoding="utf-8")
        new = rewrite(old, url, branch)
        if new != old:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "differ from" if args.check else "rewritten for"
    for path in stale:
        print(f"set_repository: {path} {verb} {url} (branch {branch})")
    if not stale:
        print(f"set_repository: everything points at {url} (branch {branch})")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
