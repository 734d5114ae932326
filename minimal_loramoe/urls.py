"""Where the repository of this book lives: the package's one copy of the URL in ``book/_config.yml``.

``book/_config.yml`` (``repository.url``, ``repository.branch``) is the one place the repository is named; the
book's links are built from it. The package cannot read that file at run time (a pip-installed package on
Colab has no ``book/`` folder), so it keeps these two constants, which ``tests/test_urls.py`` checks against the
config and ``python book/set_repository.py`` rewrites from it (see "Working from a fork" in ``book/setup.md``).
"""
REPOSITORY_URL = "https://github.com/minimal-loramoe/minimal-loramoe"
BRANCH = "main"


def raw_file_url(path: str) -> str:
    """The download URL of a file of the repository on GitHub, e.g. ``raw_file_url("data/smollm2/words.txt")``."""
    owner_repo = REPOSITORY_URL.rstrip("/").removesuffix(".git").split("github.com/", 1)[-1]
    return f"https://raw.githubusercontent.com/{owner_repo}/{BRANCH}/{path.lstrip('/')}"
