"""The run store of the experiments: one run key, where a run lives on disk, reading and writing it, and the one
process pool that runs fine-tunings side by side.

A *run* is one fine-tuning of the pretrained tiny LLaMA on one SFT mix, named by its :class:`RunKey`
``(mix, method, lr, seed)`` -- the same order everywhere. The store is a folder (the committed one:
``resources.RUNS_DIR``, ``minimal_loramoe/data/results/runs``) laid out as::

    <root>/<mix>/<method>/lr<lr:g>-seed<seed>.json                      # the evaluations after each SFT size
    <root>/<mix>/<method>/adapters/lr<lr:g>-seed<seed>.safetensors      # its trained adapters, when kept
    <root>/<mix>/<method>/adapters/lr<lr:g>-seed<seed>.json             # the run that wrote them

``reproduce``, ``fronts`` and ``tune`` are commands over this module.
"""
import json
import multiprocessing as mp
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from ..utils import atomic_write_text
from .resources import RUNS_DIR

_NAME = re.compile(r"lr(?P<lr>.+)-seed(?P<seed>-?\d+)")


@dataclass(frozen=True)
class RunKey:
    """The name of one run: ``RunKey("cipher", "lora", 1e-3, 0)``."""
    mix: str
    method: str
    lr: float
    seed: int

    @property
    def stem(self) -> str:
        """The run's file name without suffix: ``lr0.001-seed0``."""
        return f"lr{self.lr:g}-seed{self.seed}"

    def path(self, root=RUNS_DIR) -> Path:
        """The run's JSON in the store ``root``."""
        return Path(root) / self.mix / self.method / f"{self.stem}.json"

    def adapter_path(self, root=RUNS_DIR) -> Path:
        """Where the store keeps the run's trained adapters (beside them, with ``.json``: the evaluations of the run
        that wrote them and whether they repeat the stored run)."""
        return Path(root) / self.mix / self.method / "adapters" / f"{self.stem}.safetensors"

    @classmethod
    def from_path(cls, path, root=RUNS_DIR) -> "RunKey":
        """The key of a run's JSON ``<root>/<mix>/<method>/lr<lr>-seed<seed>.json`` (inverse of :meth:`path`)."""
        rel = Path(path).relative_to(root)
        if len(rel.parts) != 3 or rel.suffix != ".json":
            raise ValueError(f"not a run of the store {str(root)!r}: {str(path)!r}")
        m = _NAME.fullmatch(rel.stem)
        if m is None:
            raise ValueError(f"not a run file name (lr<lr>-seed<seed>.json): {rel.name!r}")
        return cls(rel.parts[0], rel.parts[1], float(m["lr"]), int(m["seed"]))


def covers(run: dict, sizes=None, n_per_task: int = 100) -> bool:
    """Whether a stored run was evaluated after every size of ``sizes`` (None: any) with ``n_per_task`` task-eval
    examples (the first stored runs predate the ``"n_per_task"`` key; they all used 100)."""
    return (sizes is None or set(map(str, sizes)) <= set(run["evals"])) and run.get("n_per_task", 100) == n_per_task


def read(key: RunKey, root=RUNS_DIR) -> dict | None:
    """The stored run as written, or None if the store has none."""
    path = key.path(root)
    return json.loads(path.read_text()) if path.is_file() else None


def load(key: RunKey, sizes=None, root=RUNS_DIR, n_per_task: int = 100) -> dict | None:
    """The stored run, or None if there is none that covers ``sizes`` with the same task-eval size."""
    run = read(key, root)
    return run if run is not None and covers(run, sizes, n_per_task) else None


def save(key: RunKey, run: dict, root=RUNS_DIR) -> Path:
    """Write ``run`` as the run ``key`` of the store, atomically (the folders are made; a killed process never
    leaves a half-written run for :func:`read` to trip on); returns its path."""
    path = key.path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(run, indent=1))
    return path


def keys(root=RUNS_DIR, mix: str | None = None, method: str | None = None) -> list[RunKey]:
    """Every run stored under ``root`` (of one mix and method if given), sorted by path; the hidden temporary file
    of a :func:`save` in progress is not a run."""
    pattern = f"{mix or '*'}/{method or '*'}/*.json"
    return [RunKey.from_path(p, root) for p in sorted(Path(root).glob(pattern)) if not p.name.startswith(".")]


def process_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` worker processes, started with ``spawn`` (a fresh interpreter each: no forked torch state)."""
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))


def pool_results(calls, workers: int):
    """Run ``calls`` (``(tag, fn, args, kwargs)`` each) in :func:`process_pool` and yield ``(tag, result)`` as each
    one ends (the order of completion, not of ``calls``)."""
    with process_pool(workers) as pool:
        futures = {pool.submit(fn, *args, **kwargs): tag for tag, fn, args, kwargs in calls}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
