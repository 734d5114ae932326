"""How the book reports a result, in one place: the spread over seeds, the interval of a difference, the one rule
for comparing learning-forgetting fronts, and one colour per method.

* Spread: the sample standard deviation over seeds (``ddof = 1``); undefined (``None``) for one seed.
* The front rule (every chapter): a method's *front point* is the learning rate with the most held-out knowledge
  among the rates whose mean learning (task accuracy on the easy mix, new-content accuracy on the cipher mix) is
  at least ``LEARNED_BAR``; two methods are compared by the difference of their front points' mean knowledge, with
  the 95 % interval of that difference (Welch's t, from the per-seed values). The difference is *clear* when the
  interval excludes 0.
"""
import math

import numpy as np

SPREAD = "mean ± sample standard deviation over seeds (ddof = 1)"
LEARNED_BAR = 0.9
LEARNED = {"easy": "downstream", "cipher": "new_content",  # what "learning" means on each mix
           "smollm2_reversal": "downstream", "smollm2_codes": "new_content"}  # (chapter 10: smollm_experiment.as_fronts)

# One colour per method across the whole book (matplotlib's tab10 first, then further named colours).
METHOD_COLORS = {
    "full_ft": "tab:blue", "lora": "tab:orange", "loramoe": "tab:green", "gated_lora": "tab:red",
    "loramoe_uniform_router": "tab:purple", "loramoe_no_lbc": "tab:brown", "loramoe_official_lbc": "tab:pink",
    "loramoe_swapped_lbc": "tab:olive", "loramoe_mean_lbc": "tab:cyan", "mixlora_top2": "tab:gray",
    "slim": "black", "slim_no_identity": "goldenrod", "slim_no_yield": "navy", "slim_no_merge": "darkseagreen",
}


def color_of(method: str) -> str:
    """The method's colour (a matplotlib colour name; a variant of a method, ``methods.Method.variant_of``, has
    that method's); ``KeyError`` names the methods that have one."""
    from ..methods import TABLE
    if method in TABLE and TABLE[method].variant_of is not None:
        method = TABLE[method].variant_of
    if method not in METHOD_COLORS:
        raise KeyError(f"no colour for method {method!r}; methods with one: {sorted(METHOD_COLORS)}")
    return METHOD_COLORS[method]


def sample_std(values) -> float | None:
    """Sample standard deviation (ddof = 1) of ``values``; ``None`` for fewer than two values."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1)) if values.size >= 2 else None


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (``0.5 < p < 1``) of Student's t with ``df > 0`` degrees of freedom (numerical: the
    density integrated with Simpson's rule, then bisection; accurate to about 1e-6)."""
    if not 0.5 < p < 1 or not df > 0:
        raise ValueError(f"need 0.5 < p < 1 and df > 0, got p={p}, df={df}")
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x):  # P(T <= x) for x >= 0
        grid = np.linspace(0.0, x, 4001)
        dens = c * (1 + grid ** 2 / df) ** (-(df + 1) / 2)
        h = x / 4000
        return 0.5 + h / 3 * (dens[0] + dens[-1] + 4 * dens[1:-1:2].sum() + 2 * dens[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def diff_ci95(a, b) -> tuple:
    """Difference of means ``mean(a) - mean(b)`` and its 95 % interval (Welch's t): ``(diff, low, high)``.

    ``a``, ``b``: per-seed values (independent runs). With fewer than two values on either side, or no spread at
    all, the interval is ``(None, None)``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return diff, None, None
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, None, None
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = t_quantile(0.975, df) * se
    return diff, diff - half, diff + half


def format_point(point: dict, key: str = "knowledge") -> str:
    """``"0.770 ± 0.021 [3]"``: mean ± sample std over the point's seeds (the std left out for one seed)."""
    std = point.get(key + "_std")
    spread = f" ± {std:.3f}" if std is not None else ""
    return f"{point[key]:.3f}{spread} [{len(point['seeds'])}]"


def format_diff(c: dict) -> str:
    """``"+0.090  [+0.037, +0.143]  clear"`` for a :func:`fronts.compare` result (no interval below two seeds)."""
    if c["low"] is None:
        return f"{c['diff']:+.3f}  (no interval: fewer than two seeds on a side)"
    return f"{c['diff']:+.3f}  [{c['low']:+.3f}, {c['high']:+.3f}]  {'clear' if c['clear'] else 'not clear'}"
