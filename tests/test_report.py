"""The book's reporting rules: sample spread, Welch interval, the front rule, one colour per method."""
import numpy as np
import pytest

from minimal_loramoe.lab import fronts, report
from minimal_loramoe.methods import METHODS


def test_sample_std_uses_ddof_1_and_is_undefined_for_one_value():
    assert report.sample_std([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert report.sample_std([0.5]) is None


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)])
def test_t_quantile_matches_the_t_table(df, expected):
    assert report.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)


def test_t_quantile_refuses_bad_arguments():
    with pytest.raises(ValueError, match="0.5 < p < 1"):
        report.t_quantile(0.3, 2)


def test_diff_ci95_is_centred_on_the_difference_and_shrinks_with_more_seeds():
    rng = np.random.default_rng(0)
    a, b = 0.8 + 0.02 * rng.standard_normal(3), 0.7 + 0.02 * rng.standard_normal(3)
    d, lo, hi = report.diff_ci95(a, b)
    assert d == pytest.approx(a.mean() - b.mean()) and lo < d < hi and hi - d == pytest.approx(d - lo)
    _, lo6, hi6 = report.diff_ci95(np.r_[a, a], np.r_[b, b])
    assert hi6 - lo6 < hi - lo
    assert report.diff_ci95([0.8], [0.7, 0.6])[1:] == (None, None)


def test_every_method_has_its_own_colour():
    from minimal_loramoe.methods import TABLE
    assert {m for m in METHODS if TABLE[m].variant_of is None} <= set(report.METHOD_COLORS)
    assert all(report.color_of(m) for m in METHODS)  # a variant has its method's colour
    assert len(set(report.METHOD_COLORS.values())) == len(report.METHOD_COLORS)
    with pytest.raises(KeyError, match="no colour"):
        report.color_of("nonsense")


def _toy():
    def pt(k, n, ks):
        return {"knowledge": k, "new_content": n, "knowledge_std": report.sample_std(ks), "seeds": list(range(len(ks))),
                "per_seed": {"knowledge": ks}}
    return {"mix": "cipher", "largest": 1, "tradeoff": {
        "lora": {"0.0002": pt(0.9, 0.5, [0.9]), "0.0005": pt(0.68, 0.95, [0.66, 0.68, 0.70]),
                 "0.001": pt(0.5, 0.99, [0.5, 0.5])},
        "loramoe": {"0.0005": pt(0.78, 0.95, [0.77, 0.78, 0.79]), "0.001": pt(0.6, 0.99, [0.6])}}}


def test_front_point_reports_the_rule_and_whether_the_grid_is_bracketed():
    toy = _toy()
    lora = fronts.front_point(toy, "lora")
    assert lora["lr"] == "0.0005" and lora["bracketed"] and lora["seeds"] == 3
    assert not fronts.front_point(toy, "loramoe")["bracketed"]  # its best rate is the smallest run
    c = fronts.compare(toy, "loramoe", "lora")
    assert c["diff"] == pytest.approx(0.10) and c["clear"] and c["low"] > 0
    with pytest.raises(ValueError, match="full_ft"):
        fronts.compare(toy, "full_ft", "lora")


def test_plot_fronts_draws_the_front_through_the_undominated_points_in_order_of_learning():
    import matplotlib
    matplotlib.use("Agg")
    toy = _toy()
    toy["tradeoff"]["lora"]["0.002"] = {"knowledge": 0.3, "new_content": 0.4, "seeds": [0],  # broke down: dominated
                                        "per_seed": {"knowledge": [0.3]}}
    assert fronts.pareto(toy["tradeoff"]["lora"], "new_content") == ["0.0002", "0.0005", "0.001"]
    ax = fronts.plot_fronts(toy, "new_content", ["lora"])
    xs = list(ax.get_lines()[0].get_xdata())
    assert xs == sorted(xs) and 0.4 not in xs


def test_format_diff_says_clear_or_why_there_is_no_interval():
    assert report.format_diff({"diff": 0.09, "low": 0.037, "high": 0.143, "clear": True}).endswith("clear")
    assert "fewer than two seeds" in report.format_diff({"diff": 0.09, "low": None, "high": None, "clear": False})
