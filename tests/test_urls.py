"""The repository URL lives in book/_config.yml; the package's copy (minimal_loramoe/urls.py) and the chapters'
Colab cells must agree with it, and book/set_repository.py must be able to point them all at a fork."""
import importlib.util
import json
from pathlib import Path

import pytest

from minimal_loramoe import smollm, urls

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("set_repository", ROOT / "book" / "set_repository.py")
set_repository = importlib.util.module_from_spec(spec)
spec.loader.exec_module(set_repository)


def test_the_package_names_the_repository_of_the_book_config():
    url, branch = set_repository.repository()
    assert (urls.REPOSITORY_URL, urls.BRANCH) == (url, branch), \
        "minimal_loramoe/urls.py differs from book/_config.yml: run  python book/set_repository.py"
    assert smollm.DATA_URL == f"https://raw.githubusercontent.com/{url.split('github.com/')[1]}/{branch}/data/smollm2/"


def test_the_chapters_colab_cells_are_in_step_with_the_config():
    url, branch = set_repository.repository()
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        text = nb.read_text(encoding="utf-8")
        assert set_repository.rewrite_notebook(text, url, branch) == text, \
            f"{nb.name}: run  python book/set_repository.py --notebooks"


@pytest.mark.parametrize("chapter", ["01_world", "10_real_model_smollm2"])  # a git-clone cell, a pip-install cell
def test_a_fork_on_another_branch(chapter):
    text = (ROOT / "notebooks" / f"{chapter}.ipynb").read_text(encoding="utf-8")
    fork = "https://github.com/someone/my-fork"
    new = set_repository.rewrite_notebook(text, fork, "dev")
    first = "".join(next(c for c in json.loads(new)["cells"] if c["cell_type"] == "code")["source"])
    if "git clone" in first:
        assert f"git clone -q --depth 1 --branch dev {fork}" in first and "%cd my-fork\n" in first
    else:
        assert f"git+{fork}@dev" in first
    assert "minimal-loramoe/minimal-loramoe" not in new
    changed = [(a, b) for a, b in zip(text.splitlines(), new.splitlines()) if a != b]
    assert len(new.splitlines()) == len(text.splitlines()) and 1 <= len(changed) <= 2  # only those lines
    back = set_repository.rewrite_notebook(new, "https://github.com/minimal-loramoe/minimal-loramoe", "main")
    assert back == text  # and back again, byte for byte


def test_urls_py_rewrite():
    text = (ROOT / "minimal_loramoe" / "urls.py").read_text()
    new = set_repository.rewrite_urls_py(text, "https://github.com/someone/my-fork", "dev")
    assert 'REPOSITORY_URL = "https://github.com/someone/my-fork"' in new and 'BRANCH = "dev"' in new
    namespace = {}
    exec(compile(new, "urls.py", "exec"), namespace)
    assert namespace["raw_file_url"]("data/x.txt") == "https://raw.githubusercontent.com/someone/my-fork/dev/data/x.txt"
