"""Every SCALE = "gpu" path runs, at a reduced size, on the CPU (no GPU is needed to find a typo in it).

* ``python -m minimal_loramoe.lab.reproduce --scale gpu``: the command with the gpu scale's structure (four sizes, its
  seeds' code path, its evaluation) and every size divided down.
* each chapter that picks sizes with ``{"cpu": ..., "gpu": ...}[SCALE]``: its code cells, from the one after the
  setup cell up to and including the first cell that uses the gpu sizes' results, run with ``SCALE = "gpu"`` and
  the gpu table's numbers divided down (sizes >= 1000 by 50, task-eval sizes by 20). Asserts are dropped: they
  check claims that hold at the full size. These cover code paths, not numbers: they are skipped in CI's second
  pass with other CPU kernels (``NBVAL_CPU_CAPABILITY``) and in the floors check.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minimal_loramoe.lab import reproduce

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

pytestmark = pytest.mark.slow  # every test trains models


def test_reproduce_gpu_scale_at_a_reduced_size(tmp_path, monkeypatch):
    gpu = reproduce.SCALES["gpu"]
    small = {**gpu, "sft_sizes": [n // 4000 for n in gpu["sft_sizes"]], "n_per_task": 5}
    monkeypatch.setitem(reproduce.SCALES, "gpu", small)
    res = reproduce.main(["--scale", "gpu", "--methods", "lora", "loramoe", "--seeds", "0", "--workers", "1",
                          "--figure", str(tmp_path / "f.png"), "--json", str(tmp_path / "r.json")])
    assert res["scale"] == "gpu" and res["sft_sizes"] == small["sft_sizes"] and len(small["sft_sizes"]) == 4
    assert set(res["knowledge"]) >= {"lora", "loramoe"} and (tmp_path / "f.png").is_file()


class _Shrink(ast.NodeTransformer):
    """``{"cpu": a, "gpu": b}[SCALE]`` -> the gpu entry with its numbers divided down; asserts -> pass."""

    def visit_Subscript(self, node):
        self.generic_visit(node)
        if isinstance(node.value, ast.Dict) and isinstance(node.slice, ast.Name) and node.slice.id == "SCALE":
            keys = [k.value for k in node.value.keys]
            assert {"cpu", "gpu"} <= set(keys), keys
            entry = node.value.values[keys.index("gpu")]
            for const in ast.walk(entry):
                if isinstance(const, ast.Constant) and isinstance(const.value, int) and not isinstance(
                        const.value, bool):
                    n = const.value
                    const.value = n // 50 if n >= 1000 else (max(2, n // 20) if n >= 50 else n)
            self.found = True
        return node

    def visit_Assign(self, node):
        before = self.found
        self.found = False
        self.generic_visit(node)
        if self.found:  # the names the table's choice goes to
            self.chosen |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        self.found = self.found or before
        return node

    def visit_Assert(self, node):
        return ast.Pass()


def _scaled_cells(path: Path):
    """(the code cells after the setup cell, SCALE = "gpu" and shrunk; the index of the last one to run): up to the
    first cell that uses what the gpu table chose, or a cell that branches on SCALE; None if nothing depends on it."""
    cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"][1:]
    sources, chosen, table, last = [], set(), None, None
    for i, c in enumerate(cells):
        src = "\n".join(line for line in "".join(c["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
        tree = ast.parse(src.replace('SCALE = "cpu"', 'SCALE = "gpu"'))
        shrink = _Shrink()
        shrink.found, shrink.chosen = False, set()
        tree = ast.fix_missing_locations(shrink.visit(tree))
        sources.append(ast.unparse(tree))
        loads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        if shrink.found:
            table = i if table is None else table
            chosen |= shrink.chosen
            last = i
        elif last is None and "SCALE" in loads:  # a branch on SCALE (chapter 2)
            last = i
        elif table is not None and chosen & loads and last == table:  # the first use of the gpu sizes
            last = i
    return sources, last


CHAPTERS = [p for p in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
            if '\\"gpu\\"' in p.read_text(encoding="utf-8") or "SCALE ==" in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("chapter", [p.stem for p in CHAPTERS])
def test_chapter_gpu_path_at_a_reduced_size(chapter, tmp_path):
    if os.environ.get("NBVAL_CPU_CAPABILITY"):
        pytest.skip("a code path, not numbers: run once, in the first pass")
    sources, last = _scaled_cells(NOTEBOOKS / f"{chapter}.ipynb")
    if last is None:
        pytest.skip("no cell of this chapter depends on SCALE beyond the setup")
    script = "import matplotlib\nmatplotlib.use('Agg')\n" + "\n\n".join(sources[:last + 1])
    (tmp_path / "images").symlink_to(NOTEBOOKS / "images")
    (tmp_path / "run.py").write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
