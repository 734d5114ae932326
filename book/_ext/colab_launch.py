"""Colab links for the chapters, derived from the one repository URL in _config.yml.

The chapters live in ``notebooks/`` at the repository root and reach the book through the symlink
``book/notebooks``. The theme builds its launch and source links from ``path_to_book`` + the page name, i.e.
``book/notebooks/03_x.ipynb`` -- a path GitHub (and therefore Colab) does not resolve, because it does not
follow symlinked folders. This extension

1. rewrites every header-button link of a page reached through a symlink to the file's real path in the
   repository (``notebooks/03_x.ipynb``), and
2. turns the plain "Open in Colab" link that every chapter notebook carries under its title (written by
   ``book/set_repository.py``, so it also works in Jupyter and on GitHub) into a badge (the theme's launch button
   hides in a drop-down menu; a classroom wants the link in plain sight), and warns -- an error with ``-W`` --
   when a chapter's link is missing or points elsewhere than the configured repository. The badge uses the
   theme's local Colab logo, so the page loads nothing from the network.

It also offers the repository URL to the Markdown pages as the substitution ``{{ repo_url }}``.
"""
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from sphinx.application import Sphinx
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)


def _repo_path(app: Sphinx, pagename: str) -> tuple[str, str] | None:
    """(path the theme assumed, real path) relative to the repository root, for a page behind a symlink."""
    source = Path(app.env.doc2path(pagename))
    real = source.resolve()
    if real == source.absolute():
        return None  # not behind a symlink: the theme's path is right
    theme = app.config.html_theme_options
    book_rel = theme.get("path_to_docs", "").strip("/")
    srcdir = Path(app.srcdir).resolve()
    repo_root = srcdir.parents[len(Path(book_rel).parts) - 1] if book_rel else srcdir
    assumed = os.path.join(book_rel, pagename) if book_rel else pagename
    try:
        actual = real.relative_to(repo_root).with_suffix("").as_posix()
    except ValueError:  # the link points outside the repository: leave the theme's links alone
        return None
    return assumed, actual


def _fix_buttons(buttons: list, assumed: str, actual: str) -> None:
    for button in buttons:
        if "url" in button and assumed in button["url"]:
            button["url"] = button["url"].replace(f"/{assumed}", f"/{actual}")
        _fix_buttons(button.get("buttons", []), assumed, actual)


def colab_url(app: Sphinx, repo_path: str) -> str | None:
    """https://colab.research.google.com/github/<org>/<repo>/blob/<branch>/<repo_path>.ipynb, or None."""
    theme = app.config.html_theme_options
    repo_url = theme.get("repository_url", "")
    colab = theme.get("launch_buttons", {}).get("colab_url", "").rstrip("/")
    if not (repo_url and colab):
        return None
    parts = urlsplit(repo_url)
    if parts.netloc != "github.com":
        LOGGER.warning(f"colab_launch: Colab opens GitHub repositories only, not {repo_url}")
        return None
    org_repo = parts.path.strip("/").removesuffix(".git")
    branch = theme.get("repository_branch", "main")
    return f"{colab}/github/{org_repo}/blob/{branch}/{repo_path}.ipynb"


def on_page_context(app: Sphinx, pagename, templatename, context, doctree) -> None:
    if doctree is None or not app.env.doc2path(pagename).endswith(".ipynb"):
        return
    paths = _repo_path(app, pagename)
    if paths:
        _fix_buttons(context.get("header_buttons", []), *paths)
    repo_path = paths[1] if paths else os.path.join(
        app.config.html_theme_options.get("path_to_docs", "").strip("/"), pagename)
    url = colab_url(app, repo_path)
    if url and "body" in context and app.config.colab_badges:
        logo = context["pathto"]("_static/images/logo_colab.png", 1)
        badge = (
            f'<p class="colab-badge"><a class="reference external" href="{url}" target="_blank" rel="noopener">'
            f'<img src="{logo}" alt="" width="24" height="24"/> Open this chapter in Colab</a></p>'
        )
        link = re.compile(r'<p><a class="reference external" href="(https://colab\.research\.google\.com/[^"]*)">'
                          r'Open in Colab</a></p>')
        found = link.search(context["body"])
        if found is None:
            LOGGER.warning(f"colab_launch: {pagename} has no 'Open in Colab' link under its title: "
                           "run python book/set_repository.py --notebooks")
        elif found.group(1) != url:
            LOGGER.warning(f"colab_launch: {pagename} links Colab to {found.group(1)}, not {url}: "
                           "run python book/set_repository.py --notebooks")
        else:
            context["body"] = link.sub(lambda m: badge, context["body"], count=1)


def add_repo_substitution(app: Sphinx, config) -> None:
    """Make the repository URL and the published site's address available to the Markdown pages as
    ``{{ repo_url }}`` and ``{{ site_url }}``."""
    url = config.html_theme_options.get("repository_url", "")
    parts = [p for p in urlsplit(url).path.split("/") if p]
    site = f"https://{parts[0].lower()}.github.io/{parts[1].removesuffix('.git')}/" if len(parts) >= 2 else url
    config.myst_substitutions = {**config.myst_substitutions, "repo_url": url, "site_url": site}


def setup(app: Sphinx) -> dict:
    app.add_config_value("colab_badges", True, "html")  # off in the student edition (book/student_edition.py)
    app.connect("config-inited", add_repo_substitution)
    # sphinx-book-theme adds its launch/source buttons at priority 501; run after it.
    app.connect("html-page-context", on_page_context, priority=510)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
