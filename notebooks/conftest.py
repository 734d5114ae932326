"""pytest --nbval runs every chapter in a fresh kernel, which inherits this environment.

One CPU thread: the tiny models run faster on one thread than on two (they cannot keep two cores busy), and the
saved outputs were produced with one thread -- float sums taken in another order could change a printed digit,
and strict nbval compares the printed numbers. Set before any kernel starts; a GPU run is unaffected.
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
