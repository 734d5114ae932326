"""The fixed recipe's tuning rule (minimal_loramoe.tune) and the committed choice it made."""
import json

from minimal_loramoe import tune
from minimal_loramoe.reproduce import TUNED_LR_FILE


def test_select_takes_the_most_knowledge_among_rates_that_learn_the_tasks_else_the_best_tasks():
    grid = {1e-4: (0.99, 0.97), 2e-4: (0.98, 0.99), 5e-4: (0.90, 1.0)}
    assert tune.select(grid) == 2e-4
    assert tune.select({1e-4: (0.99, 0.5), 2e-4: (0.9, 0.7)}) == 2e-4  # none reaches the bar: best tasks


def test_every_committed_choice_is_inside_its_grid():
    committed = json.loads(TUNED_LR_FILE.read_text())
    for method in tune.TUNED_METHODS:
        grid = {float(lr): (v["knowledge"], v["downstream"]) for lr, v in committed["grid"][method].items()}
        chosen = committed["lr"][method]
        assert tune.select(grid) == chosen, f"{method}: the committed choice follows the rule"
        assert min(grid) < chosen < max(grid), f"{method}: the chosen rate {chosen:g} is at the end of its grid"
