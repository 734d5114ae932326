"""Where the files the chapters read live: inside the package, found with ``importlib.resources``.

The tiny LLaMA checkpoint (``tiny_llama/``), samples of the synthetic world (``world/``), the committed results and
their run store (``results/``, ``results/runs/``) and the SmolLM2 probe and SFT files (``smollm2/``) are package
data, so ``pip install minimal-loramoe`` (a wheel, or ``git+<repository URL>``) alone runs every chapter from any
folder -- no checkout, no download. ``python -c "import minimal_loramoe.lab.resources as r; print(r.DATA_DIR)"``
shows where they are.

The package data is read-only for users: the command-line tools write their results under ``./runs/`` in the
current folder by default and write into this folder only when asked to (``--store``, for maintainers working in
an editable install; see the README).
"""
from importlib import resources
from pathlib import Path


def data_path(*parts: str) -> Path:
    """The path of a file or folder of the package data, e.g. ``data_path("results", "tuned_lr.json")``.

    A wheel or an editable install keeps the package on disk, so this is an ordinary path.
    """
    root = resources.files("minimal_loramoe") / "data"
    return Path(str(root.joinpath(*parts)))


DATA_DIR = data_path()
CHECKPOINT_DIR = data_path("tiny_llama")
WORLD_DIR = data_path("world")
RESULTS_DIR = data_path("results")
RUNS_DIR = data_path("results", "runs")
SMOLLM_DIR = data_path("smollm2")
# Where the command-line tools write by default: a run folder in the current directory, never the package data.
DEFAULT_OUT_DIR = Path("runs")


def cli_out(out, store: bool, committed: Path, default_name: str) -> Path:
    """Where a command-line tool writes: ``--out`` if given; the committed package data with ``--store``
    (maintainers); else ``./runs/<default_name>``, so a class running its own experiments never changes the
    results the chapters read."""
    if out is not None and store:
        raise SystemExit("give --out or --store, not both")
    if out is not None:
        return Path(out)
    return committed if store else DEFAULT_OUT_DIR / default_name


STORE_HELP = ("write into the committed package data (minimal_loramoe/data/...) instead of ./runs/: for "
              "maintainers, in an editable install of a checkout")
