import pytest
import torch

from minimal_loramoe import (add_loramoe, corrected_localized_balance_loss, localized_balance_loss,
                             model_balance_loss)
from minimal_loramoe.balance import LBC_VARIANTS, balance_matrix, coefficients, cv_squared

# Two samples, two tokens, two experts. Sample 0 is a knowledge sample (type 1), sample 1 a task sample (type 0).
GATES = torch.tensor([[[0.6, 0.4], [0.8, 0.2]],
                      [[0.3, 0.7], [0.5, 0.5]]])
TYPES = torch.tensor([1, 0])


def test_official_loss_matches_hand_computation():
    # Q (per sample): [1.4, 0.6] and [0.8, 1.2]. C: type 1 -> [1.1, 0.9], type 0 -> [0.9, 1.1].
    Z = [1.4 * 1.1, 0.6 * 0.9, 0.8 * 0.9, 1.2 * 1.1]  # 1.54, 0.54, 0.72, 1.32
    mean = sum(Z) / 4
    var = sum((z - mean) ** 2 for z in Z) / 3  # unbiased, as torch.var
    expected = 0.1 * var / (mean ** 2 + 1e-10)
    assert localized_balance_loss(GATES, TYPES, delta=0.1, beta=0.1).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.0213781, rel=1e-5)


def test_mask_leaves_padding_out_of_Q():
    padded = torch.cat([GATES, torch.tensor([[[0.99, 0.01]], [[0.01, 0.99]]])], dim=1)  # a 3rd, padded token
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    torch.testing.assert_close(localized_balance_loss(padded, TYPES, attention_mask=mask),
                               localized_balance_loss(GATES, TYPES))
    assert not torch.allclose(localized_balance_loss(padded, TYPES), localized_balance_loss(GATES, TYPES))


def test_coefficients_follow_the_official_code():
    C = coefficients(torch.tensor([1, 0]), num_experts=4, delta=0.1)
    torch.testing.assert_close(C, torch.tensor([[1.1, 1.1, 0.9, 0.9], [0.9, 0.9, 1.1, 1.1]]))
    Cc = coefficients(torch.tensor([1, 0]), num_experts=4, delta=0.1, corrected=True)
    torch.testing.assert_close(Cc, torch.tensor([[0.9, 0.9, 1.1, 1.1], [1.1, 1.1, 0.9, 0.9]]))


def optimum(loss_fn, delta=0.1):
    """Weight p that a knowledge sample puts on the knowledge group (task samples mirror it) minimising loss."""
    ps = torch.linspace(0.01, 0.99, 981)
    losses = []
    for p in ps:
        gates = torch.stack([torch.stack([p, 1 - p]), torch.stack([1 - p, p])]).unsqueeze(1)  # (2, 1, 2)
        losses.append(loss_fn(gates, TYPES, delta=delta).item())
    return ps[int(torch.tensor(losses).argmin())].item()


def test_official_optimum_is_mirrored_and_corrected_points_the_right_way():
    # Official: minimum where p(1+delta) = (1-p)(1-delta) -> p = (1-delta)/2 = 0.45: AWAY from the matching group.
    assert optimum(localized_balance_loss) == pytest.approx(0.45, abs=2e-3)
    # Corrected: p = (1+delta)/2 = 0.55: the matching group gets more weight.
    assert optimum(corrected_localized_balance_loss) == pytest.approx(0.55, abs=2e-3)


def test_corrected_normalises_per_sample():
    # Repeating every token of a sample (a longer sample, same routing) does not change the corrected loss.
    long = GATES.repeat_interleave(3, dim=1)
    torch.testing.assert_close(corrected_localized_balance_loss(long, TYPES),
                               corrected_localized_balance_loss(GATES, TYPES))


@pytest.mark.parametrize("gates, types, match", [
    (torch.rand(2, 3, 3), torch.tensor([1, 0]), "even number of experts"),
    (torch.rand(2, 3, 4), torch.tensor([1, 0, 1]), r"task_types must have shape \(2,\)"),
    (torch.rand(2, 3, 4), torch.tensor([1, 2]), "only 0 .* and 1"),
    (torch.rand(2, 4), torch.tensor([1, 0]), "gates must have shape"),
])
def test_bad_inputs(gates, types, match):
    with pytest.raises(ValueError, match=match):
        localized_balance_loss(gates, types)


def test_model_balance_loss_sums_every_layer(tiny_llama):
    model = add_loramoe(tiny_llama, num_experts=4, rank=2)
    ids = torch.randint(0, 64, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    model(input_ids=ids, attention_mask=mask)
    layers = [m for m in model.modules() if hasattr(m, "last_gates") and m.last_gates is not None]
    assert len(layers) == 2 * 3  # 2 decoder layers x (gate, up, down)
    expected = sum(localized_balance_loss(m.last_gates, TYPES, attention_mask=mask) for m in layers)
    torch.testing.assert_close(model_balance_loss(model, TYPES, attention_mask=mask), expected)
    with pytest.raises(ValueError, match="variant must be one of"):
        model_balance_loss(model, TYPES, variant="mirrored")


def test_model_balance_loss_needs_loramoe(tiny_llama):
    with pytest.raises(ValueError, match="add_loramoe"):
        model_balance_loss(tiny_llama, TYPES)


def test_each_change_of_the_corrected_loss_alone():
    # "swapped": the corrected coefficients, Q summed over tokens (official); "mean": official coefficients, Q a
    # per-sample mean. Their optima: swapping alone turns the optimum around, averaging alone does not.
    def variant(name):
        def loss(gates, types, delta=0.1):
            swap, mean = LBC_VARIANTS[name]
            return 0.1 * cv_squared(balance_matrix(gates, types, delta, swap=swap, per_sample_mean=mean))
        return loss
    assert optimum(variant("swapped")) == pytest.approx(0.55, abs=2e-3)
    assert optimum(variant("mean")) == pytest.approx(0.45, abs=2e-3)
    # sample 0 three times as long, same routing (sample 1 padded): "mean" unchanged, "swapped" changed
    long = torch.cat([GATES[:1].repeat_interleave(3, dim=1),
                      torch.cat([GATES[1:], torch.full((1, 4, 2), 0.5)], dim=1)])
    mask = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0]])

    def masked(name, gates, m=None):
        swap, mean = LBC_VARIANTS[name]
        return cv_squared(balance_matrix(gates, TYPES, 0.1, m, swap=swap, per_sample_mean=mean))
    torch.testing.assert_close(masked("mean", long, mask), masked("mean", GATES))
    assert not torch.allclose(masked("swapped", long, mask), masked("swapped", GATES))
    # both flags on is the corrected loss, both off the official one
    torch.testing.assert_close(variant("corrected")(GATES, TYPES), corrected_localized_balance_loss(GATES, TYPES))
    torch.testing.assert_close(variant("official")(GATES, TYPES), localized_balance_loss(GATES, TYPES))
