"""Point the package and the chapters at the repository named in book/_config.yml (e.g. your fork).

``repository.url`` and ``repository.branch`` in ``book/_config.yml`` are the one place the repository is named.
The book's Colab and repository links are built from them at build time (``book/_ext/colab_launch.py``); two
other places hold a copy, because they cannot read the config when they run:

* ``minimal_loramoe/urls.py`` (the package on Colab downloads data files from there: ``smollm.DATA_URL``);
* the first code cell of every chapter, which clones or pip-installs the repository on Colab.

    python book/set_repository.py                # rewrite minimal_loramoe/urls.py from the config
    python book/set_repository.py --notebooks    # ... and the first cell of every chapter notebook
    python book/set_repository.py --check        # change nothing; exit 1 if a copy differs from the config

Only the repository URL, the branch and the folder a clone creates (``%cd <name>``) are rewritten; nothing else
in a notebook changes (its outputs stay as they are).
"""
import argparse
import re
import sys
from pathlib import Path

import yaml

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
CONFIG = BOOK / "_config.yml"
URLS = ROOT / "minimal_loramoe" / "urls.py"
NOTEBOOKS = ROOT / "notebooks"
DEFAULT_BRANCH = "main"  # cloned / installed without naming a branch

# Patterns inside the JSON text of a notebook: a URL ends at whitespace, a quote or a backslash (an escaped \n).
CLONE = re.compile(r'(git clone -q --depth 1 )(?:--branch [^\s"\\]+ )?https?://[^\s"\\]+?(\.git)?(?=[\s"\\])')
PIP = re.compile(r'git\+https?://[^\s"\\@]+(?:@[^\s"\\]+)?')
CD = re.compile(r'(%cd )[^\s"\\]+')


def repository() -> tuple[str, str]:
    """(url, branch) from book/_config.yml."""
    repo = yaml.safe_load(CONFIG.read_text())["repository"]
    return repo["url"].rstrip("/").removesuffix(".git"), repo.get("branch", DEFAULT_BRANCH)


def rewrite_urls_py(text: str, url: str, branch: str) -> str:
    text = re.sub(r'^REPOSITORY_URL = ".*"$', f'REPOSITORY_URL = "{url}"', text, count=1, flags=re.M)
    return re.sub(r'^BRANCH = ".*"$', f'BRANCH = "{branch}"', text, count=1, flags=re.M)


def rewrite_notebook(text: str, url: str, branch: str) -> str:
    """The raw text of a notebook with its Colab clone / install lines pointing at ``url`` (and ``branch``)."""
    on_branch = branch != DEFAULT_BRANCH
    text = CLONE.sub(lambda m: m[1] + (f"--branch {branch} " if on_branch else "") + url + (m[2] or ""), text)
    text = PIP.sub("git+" + url + (f"@{branch}" if on_branch else ""), text)
    if CLONE.search(text):  # the clone creates a folder named like the repository
        text = CD.sub(lambda m: m[1] + url.rsplit("/", 1)[-1], text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--notebooks", action="store_true", help="also rewrite the chapters' first cells")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a copy differs")
    args = p.parse_args(argv)
    url, branch = repository()
    targets = [(URLS, rewrite_urls_py)]
    if args.notebooks or args.check:
        targets += [(nb, rewrite_notebook) for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))]
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
