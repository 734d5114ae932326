"""Where the repository of this book lives: the package's one copy of the URL in ``book/_config.yml``.

``book/_config.yml`` (``repository.url``, ``repository.branch``) is the one place the repository is named; the
book's links are built from it. The package cannot read that file at run time (an installed package has no
``book/`` folder), so it keeps these two constants, which ``tests/test_urls.py`` checks against the config and
``python book/set_repository.py`` rewrites from it (see "Working from a fork" in ``book/setup.md``). Everything
else -- the chapters' Colab links and install line, the published site's address -- is derived from them here.
"""
REPOSITORY_URL = "https://github.com/minimal-loramoe/minimal-loramoe"
BRANCH = "main"
DEFAULT_BRANCH = "main"  # installed or opened without naming a branch
COLAB = "https://colab.research.google.com"


def owner_repo(url: str = REPOSITORY_URL) -> tuple[str, str]:
    """``("owner", "name")`` of a GitHub repository URL."""
    path = url.rstrip("/").removesuffix(".git").split("github.com/", 1)[-1]
    owner, name = path.split("/")[:2]
    return owner, name


def pip_requirement(url: str = REPOSITORY_URL, branch: str = BRANCH) -> str:
    """What the chapters' first cell installs on Colab: the package, its data and the SmolLM2 extra, from GitHub."""
    return f"minimal-loramoe[smollm] @ git+{url.rstrip('/')}" + (f"@{branch}" if branch != DEFAULT_BRANCH else "")


def colab_url(notebook: str, url: str = REPOSITORY_URL, branch: str = BRANCH) -> str:
    """The "Open in Colab" address of a chapter, e.g. ``colab_url("01_world.ipynb")``."""
    owner, name = owner_repo(url)
    return f"{COLAB}/github/{owner}/{name}/blob/{branch}/notebooks/{notebook}"


def site_url(url: str = REPOSITORY_URL) -> str:
    """Where the book is published: the repository's GitHub Pages site (``.github/workflows/book.yml``)."""
    owner, name = owner_repo(url)
    return f"https://{owner.lower()}.github.io/{name}/"
