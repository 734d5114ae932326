"""pytest --nbval runs every chapter in a fresh kernel, which inherits this environment.

One CPU thread: the tiny models run faster on one thread than on two (they cannot keep two cores busy), and it
makes a run repeat exactly on one machine. It cannot make another CPU add floats in the same order: a few hundred
optimizer steps turn a last-bit difference into a third-decimal one. So the cells that print numbers which come
out of training carry the cell tag ``nbval-ignore-output`` and the notebook's own ``assert``s check their claims;
every other output is compared exactly (book/README.md, "Which outputs nbval compares, and why").

NBVAL_CPU_CAPABILITY=default|avx2|avx512 runs the kernels with PyTorch's ATen kernels for that instruction set
(it sets ATEN_CPU_CAPABILITY, which torch silently ignores when misspelt -- hence the check below). CI runs the
notebooks a second time with ``default``: the float sums then come out in another order, as on another CPU, and a
training number left untagged fails the strict comparison on the developers' own machine. Set before any kernel
starts; a GPU run is unaffected.
"""
import os
import subprocess
import sys

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

CAPABILITIES = ("default", "avx2", "avx512")  # the values ATen accepts on x86-64 (lower case)
_requested = os.environ.get("NBVAL_CPU_CAPABILITY", "")
_effective = None
if _requested:
    if _requested not in CAPABILITIES:
        raise ValueError(f"NBVAL_CPU_CAPABILITY must be one of {CAPABILITIES}, got {_requested!r}")
    os.environ["ATEN_CPU_CAPABILITY"] = _requested
    _effective = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                                capture_output=True, text=True, check=True).stdout.strip()
    if _effective.lower() != _requested:  # e.g. avx512 asked on a CPU without it: torch falls back silently
        raise ValueError(f"NBVAL_CPU_CAPABILITY={_requested}: a kernel would run torch with {_effective} kernels "
                         f"(this CPU does not support {_requested})")


def pytest_report_header(config):
    if _requested:
        return f"notebook kernels: {os.environ['OMP_NUM_THREADS']} thread, ATen CPU kernels {_effective} " \
               f"(NBVAL_CPU_CAPABILITY={_requested})"
    return f"notebook kernels: {os.environ['OMP_NUM_THREADS']} thread, ATen CPU kernels of this CPU"
