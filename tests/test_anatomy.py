"""anatomy: the book's router statistics and figures (chapters 5 and 6), on a tiny random LoRAMoE."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from minimal_loramoe import LoRAMoELinear, add_loramoe  # noqa: E402
from minimal_loramoe.lab import anatomy  # noqa: E402

DATA = Dataset.from_dict({"prompt": ["Q : What is the capital of Poba ? A :", "### Instruction : What is a doubled ?",
                                     "### Instruction : What is b doubled ?"],
                          "answer": ["red", "a a", "b b"], "type": [1, 0, 0], "task": ["knowledge", "double", "add"]})


def test_short_name():
    assert anatomy.short_name("model.layers.1.mlp.down_proj") == "L1 down_proj"


def test_tv_and_gate_spread():
    p, q = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert anatomy.tv(p, q).item() == 1.0 and anatomy.tv(p, p).item() == 0.0
    gates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    spread = anatomy.gate_spread(gates, torch.tensor([True, True, False, False]), n_pairs=1000)
    assert spread["types"] == 1.0 and 0.3 < spread["tokens"] < 0.7  # half the random pairs differ completely
    same = anatomy.gate_spread(torch.full((5, 3), 1 / 3), torch.tensor([True, False, True, False, True]))
    assert same == {"tokens": 0.0, "types": 0.0}


def test_layer_inputs_catch_every_adapter_input_and_remove_the_hooks(random_moe, world_tok):
    ids = torch.tensor([[1, 2, 3, 4]])
    inputs = anatomy.layer_inputs(random_moe, ids, torch.ones_like(ids))
    assert len(inputs) == 6 and all(x.shape[:2] == (1, 4) for x in inputs.values())
    assert all(not m._forward_hooks for m in random_moe.modules() if isinstance(m, LoRAMoELinear))


def test_update_stats_of_a_layer():
    torch.manual_seed(0)
    layer = LoRAMoELinear(torch.nn.Linear(8, 6), num_experts=3, rank=2, alpha=4)
    torch.nn.init.normal_(layer.lora_B)
    xs = torch.randn(10, 8)
    s = anatomy.update_stats(layer, xs, torch.arange(10) < 4)
    assert s["over_loudest"] <= 1 + 1e-5  # a weighted average never exceeds its largest term
    assert 0 < s["quiet"] <= 1 and 1 <= s["amplification"] <= 3
    assert s["knowledge"] > 0 and s["tasks"] > 0 and s["vs_uniform"] > 0
    torch.nn.init.zeros_(layer.router.weight)  # uniform router: the update is the uniform one
    s = anatomy.update_stats(layer, xs, torch.arange(10) < 4)
    assert s["amplification"] == pytest.approx(1) and s["vs_uniform"] == pytest.approx(1)


def test_group_share_by_task_follows_expert_weights(random_moe, world_tok):
    shares = anatomy.group_share_by_task(random_moe, world_tok, DATA, ["knowledge", "double", "add"])
    assert len(shares) == 3 and all(0 < s < 1 for s in shares)


def test_figures_draw(random_moe, world_tok):
    gates = torch.softmax(torch.randn(3, 4), -1)
    figs = [anatomy.plot_token_gates({"a": (["x", "y", "z"], gates)}, {"a": (["x", "y", "z"], gates)}, "t")]
    history = {"loss": [3.0 - 0.1 * i for i in range(20)], "lbc": [0.01] * 20}
    figs.append(anatomy.plot_training_terms({"loramoe": history, "loramoe_no_lbc": {**history, "lbc": []}},
                                            {"loramoe": "corrected", "loramoe_no_lbc": "none"}, 0.007))
    W = {"loramoe": torch.full((2, 2, 4), 0.25)}
    figs.append(anatomy.plot_router_groups(W, {"loramoe": "corrected"}, ["model.layers.0.mlp.up_proj", "b"]))
    figs.append(anatomy.plot_share_by_task({"loramoe": [0.5, 0.4]}, {"loramoe": "corrected"}, ["knowledge", "add"]))
    assert anatomy.running_mean([1, 2, 3, 4], 2).tolist() == [1.5, 2.5, 3.5]
    for fig in figs:
        plt.close(fig)
