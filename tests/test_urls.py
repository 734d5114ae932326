"""The repository URL lives in book/_config.yml; the package's copy (minimal_loramoe/lab/urls.py), the chapters' first
cell and Colab link, the README's site address and pyproject's URLs must agree with it, and
book/set_repository.py must be able to point them all at a fork."""
import importlib.util
import json
from pathlib import Path

import pytest

from minimal_loramoe.lab import urls

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("set_repository", ROOT / "book" / "set_repository.py")
set_repository = importlib.util.module_from_spec(spec)
spec.loader.exec_module(set_repository)
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_the_package_names_the_repository_of_the_book_config():
    url, branch = set_repository.repository()
    assert (urls.REPOSITORY_URL, urls.BRANCH) == (url, branch), \
        "minimal_loramoe/lab/urls.py differs from book/_config.yml: run  python book/set_repository.py"


def test_derived_addresses():
    fork = "https://github.com/Someone/my-fork"
    assert urls.colab_url("01_world.ipynb", fork, "dev") == \
        "https://colab.research.google.com/github/Someone/my-fork/blob/dev/notebooks/01_world.ipynb"
    assert urls.site_url(fork) == "https://someone.github.io/my-fork/"
    assert urls.pip_requirement(fork, "main") == "minimal-loramoe[smollm] @ git+https://github.com/Someone/my-fork"
    assert urls.pip_requirement(fork, "dev").endswith("git+https://github.com/Someone/my-fork@dev")


def test_everything_is_in_step_with_the_config():
    assert set_repository.main(["--check"]) == 0, "run  python book/set_repository.py --notebooks"
    readme = (ROOT / "README.md").read_text()
    assert urls.site_url() in readme, "the README must name the published book"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'Repository = "{urls.REPOSITORY_URL}"' in pyproject and f'"{urls.site_url()}"' in pyproject


def test_every_chapter_opens_the_same_way():
    url, branch = set_repository.repository()
    firsts = set()
    for nb in CHAPTERS:
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        first_code = next(c for c in cells if c["cell_type"] == "code")
        firsts.add("".join(first_code["source"]))
        intro = "".join(next(c for c in cells if c["cell_type"] == "markdown")["source"])
        assert f"[Open in Colab]({urls.colab_url(nb.name)})" in intro, nb.name
    assert firsts == {set_repository.setup_cell(url, branch)}
    assert len(CHAPTERS) == 10


@pytest.mark.parametrize("chapter", ["01_world", "10_real_model_smollm2"])
def test_a_fork_on_another_branch(chapter):
    text = (ROOT / "notebooks" / f"{chapter}.ipynb").read_text(encoding="utf-8")
    fork = "https://github.com/someone/my-fork"
    new = set_repository.rewrite_notebook(text, fork, "dev", f"{chapter}.ipynb")
    cells = json.loads(new)["cells"]
    first = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
    assert f'%pip install -q "minimal-loramoe[smollm] @ git+{fork}@dev"' in first
    assert f"colab.research.google.com/github/someone/my-fork/blob/dev/notebooks/{chapter}.ipynb" in new
    assert "minimal-loramoe/minimal-loramoe" not in new
    changed = [(a, b) for a, b in zip(text.splitlines(), new.splitlines()) if a != b]
    assert len(new.splitlines()) == len(text.splitlines()) and len(changed) == 2  # only those lines
    back = set_repository.rewrite_notebook(new, "https://github.com/minimal-loramoe/minimal-loramoe", "main",
                                           f"{chapter}.ipynb")
    assert back == text  # and back again, byte for byte


def test_urls_py_rewrite():
    text = (ROOT / "minimal_loramoe" / "lab" / "urls.py").read_text()
    new = set_repository.rewrite_urls_py(text, "https://github.com/someone/my-fork", "dev")
    assert 'REPOSITORY_URL = "https://github.com/someone/my-fork"' in new and 'BRANCH = "dev"' in new
    namespace = {}
    exec(compile(new, "urls.py", "exec"), namespace)
    assert namespace["colab_url"]("x.ipynb").endswith("/someone/my-fork/blob/dev/notebooks/x.ipynb")
