"""routing: gate statistics per sample type, mean gates, group shares, and forcing one expert group."""
import pytest
import torch
from datasets import Dataset

from minimal_loramoe import add_loramoe
from minimal_loramoe.routing import force_group, group_weight, mean_gates, mean_gates_by_type


DATA = Dataset.from_dict({"prompt": ["Q : What is the capital of Poba ? A :", "### Instruction : What is a doubled ?",
                                     "### Instruction : What is b doubled ?"],
                          "answer": ["red", "a a", "b b"], "type": [1, 0, 0]})


def test_expert_weights_are_mean_gates_per_type_that_sum_to_one(random_moe, world_tok):
    names, W = mean_gates_by_type(random_moe, world_tok, DATA, batch_size=2)
    assert W.shape == (len(names), 2, 4) and len(names) == 6  # 2 decoder layers x gate/up/down
    assert torch.allclose(W.sum(-1), torch.ones(len(names), 2), atol=1e-5)


def test_mean_gates_average_the_two_types_by_their_tokens(random_moe, world_tok):
    gates = mean_gates(random_moe, world_tok, DATA)
    names, W = mean_gates_by_type(random_moe, world_tok, DATA)
    assert list(gates) == names
    for g, w in zip(gates.values(), W):
        assert g.shape == (4,) and torch.allclose(g.sum(), torch.tensor(1.0), atol=1e-5)
        lo, hi = torch.minimum(w[0], w[1]), torch.maximum(w[0], w[1])
        assert ((g >= lo - 1e-6) & (g <= hi + 1e-6)).all()  # a weighted mean of the two types


def test_group_weight_is_the_knowledge_groups_share(random_moe, world_tok):
    shares = group_weight(random_moe, world_tok, DATA)
    _, W = mean_gates_by_type(random_moe, world_tok, DATA)
    assert shares["knowledge_samples"] == pytest.approx(W[:, 1, :2].sum(-1).mean().item(), abs=1e-6)
    assert shares["task_samples"] == pytest.approx(W[:, 0, :2].sum(-1).mean().item(), abs=1e-6)


@pytest.mark.parametrize("group, share", [("knowledge", 1.0), ("task", 0.0)])
def test_force_group_puts_every_gate_on_one_group_and_undoes_itself(random_moe, world_tok, group, share):
    before = group_weight(random_moe, world_tok, DATA)
    with force_group(random_moe, group):
        forced = group_weight(random_moe, world_tok, DATA)
    assert forced["knowledge_samples"] == pytest.approx(share) and forced["task_samples"] == pytest.approx(share)
    assert group_weight(random_moe, world_tok, DATA) == before


def test_routing_needs_loramoe_layers(tiny_llama, world_tok):
    with pytest.raises(ValueError, match="no LoRAMoELinear"):
        mean_gates(tiny_llama, world_tok, DATA)
    with pytest.raises(ValueError, match="group must be one of"):
        with force_group(tiny_llama, "both"):
            pass
