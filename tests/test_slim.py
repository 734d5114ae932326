"""SLIM's pieces (arXiv 2410.07739): top-K routing, identity experts, sliding clusters and weight yielding, DARE
masks, the L1 penalty, merging, and the new fine-tuning methods."""
import copy

import pytest
import torch
from torch import nn

from minimal_loramoe import LoRAMoELinear, add_loramoe, adapter_layers, load_adapter_file, save_adapter_file
from minimal_loramoe.balance import corrected_localized_balance_loss, model_balance_loss
from minimal_loramoe.finetune import FinetuneConfig, finetune, weight_change
from minimal_loramoe.methods import SLIM_METHODS
from minimal_loramoe.routing import force_group
from minimal_loramoe.slim import dare_masked, dare_masks, l1_penalty, merge_loramoe, merged_weight


def make(E=4, r=3, d_in=10, d_out=7, seed=0, **kw):
    torch.manual_seed(seed)
    layer = LoRAMoELinear(nn.Linear(d_in, d_out), num_experts=E, rank=r, alpha=6, **kw)
    nn.init.normal_(layer.lora_B)  # non-zero experts, so the test can tell them apart
    return layer


def boost_identity(layer, value=1e4):
    """Forward hook adding ``value`` to the identity experts' router logits."""
    E = layer.num_experts

    def hook(module, args, logits):
        return torch.cat([logits[..., :E], logits[..., E:] + value], dim=-1)
    return layer.router.register_forward_hook(hook)


@pytest.mark.parametrize("E, I, K", [(4, 0, 1), (4, 0, 2), (6, 2, 2), (6, 2, 3)])
def test_top_k_gates_have_k_nonzeros_summing_to_one(E, I, K):
    layer = make(E=E, num_identity_experts=I, top_k=K)
    x = torch.randn(3, 5, 10)
    layer(x)
    g = layer.last_gates
    assert g.shape == (3, 5, E + I)
    assert ((g > 0).sum(-1) == K).all()
    torch.testing.assert_close(g.sum(-1), torch.ones(3, 5))
    # the same as a softmax over the K largest logits only (how Mixtral writes it)
    logits = layer.router(x).float()
    top, idx = logits.topk(K, dim=-1)
    expected = torch.zeros_like(logits).scatter(-1, idx, torch.softmax(top, dim=-1))
    torch.testing.assert_close(g, expected)


def test_dense_default_is_bitwise_unchanged():
    x = torch.randn(2, 5, 10)
    default, explicit = make(), make(top_k=None, num_identity_experts=0, num_clusters=0)
    assert torch.equal(default(x), explicit(x))
    assert torch.equal(default.last_gates, torch.softmax(default.router(x).float(), dim=-1))
    assert default.state_dict().keys() == explicit.state_dict().keys()
    assert default.clusters is None and "top_k" not in repr(default)
    torch.testing.assert_close(make(top_k=4)(x), default(x))  # K = E keeps every weight


@pytest.mark.parametrize("top_k", [None, 2])
def test_identity_experts_leave_the_frozen_output_bitwise(top_k):
    layer = make(E=4, num_identity_experts=2, top_k=top_k)
    assert layer.router.weight.shape == (6, 10)
    assert {n for n, _ in layer.named_parameters()} == {"base_layer.weight", "base_layer.bias", "lora_A", "lora_B",
                                                        "router.weight"}
    x = torch.randn(2, 5, 10)
    assert not torch.equal(layer(x), layer.base(x))  # the LoRA experts do something...
    handle = boost_identity(layer)
    y = layer(x)  # ...but all weight on the identity experts gives the frozen layer exactly
    handle.remove()
    assert torch.equal(layer.last_gates[..., :4], torch.zeros(2, 5, 4))
    assert torch.equal(y, layer.base(x))


def test_lbc_ignores_identity_share():
    """The constraint sees the LoRA experts' gates renormalised: the identity share does not change it."""
    layer = make(E=4, num_identity_experts=2)
    lora = torch.softmax(torch.randn(3, 5, 4), dim=-1)  # (B, T, E) split of the adapter weight
    types, loss = torch.tensor([1, 0, 1]), []
    for identity_share in (torch.zeros(3, 1, 1), torch.tensor([0.9, 0.1, 0.5]).view(3, 1, 1)):
        layer.last_gates = torch.cat([lora * (1 - identity_share), (identity_share / 2).expand(3, 5, 2)], -1)
        loss.append(model_balance_loss(nn.Sequential(layer), types, variant="corrected"))
    torch.testing.assert_close(loss[0], loss[1])
    torch.testing.assert_close(loss[0], corrected_localized_balance_loss(lora, types))


def test_force_group_blocks_identity_experts_too():
    layer = make(E=4, num_identity_experts=2)
    with force_group(nn.Sequential(layer), "task"):
        layer(torch.randn(2, 3, 10))
    g = layer.last_gates
    assert torch.equal(g[..., :2], torch.zeros(2, 3, 2)) and torch.equal(g[..., 4:], torch.zeros(2, 3, 2))
    torch.testing.assert_close(g.sum(-1), torch.ones(2, 3))


def test_clusters_update_in_training_and_freeze_in_eval():
    layer = make(E=4, num_identity_experts=2, top_k=2, num_clusters=3)
    x = torch.randn(4, 6, 10) * 3 + 1
    layer.train()
    layer(x)  # first batch seeds the clusters
    assert layer.clusters.num_updates == 1
    assert torch.isin(layer.clusters.centres, x).all()  # centres are tokens of the batch
    seeded = {k: v.clone() for k, v in layer.clusters.state_dict().items()}
    layer(x + 2)
    assert layer.clusters.num_updates == 2 and not torch.equal(layer.clusters.centres, seeded["centres"])
    trained = {k: v.clone() for k, v in layer.clusters.state_dict().items()}
    layer.eval()
    y1 = layer(torch.randn(4, 6, 10) * 10)
    y2 = layer(torch.randn(4, 6, 10) * 10)
    assert y1.shape == y2.shape
    for k, v in layer.clusters.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_yielding_moves_weight_to_identity_experts_as_d_grows():
    layer = make(E=2, num_identity_experts=1, num_clusters=1)
    nn.init.zeros_(layer.router.weight)  # router logits 0: only the yield bonus decides
    layer.clusters.num_updates.fill_(1)
    layer.clusters.d_ref.fill_(2.0)  # training tokens were 3 sigmas out on their worst channel
    layer.eval()
    t = torch.tensor([0.5, 3.0, 4.0, 6.0, 12.0])
    x = torch.zeros(5, 10)
    x[:, 0] = t  # centre 0, variance 1: d = t - 1, bonus = relu(d - 2)
    with torch.no_grad():
        layer(x)
    identity = layer.last_gates[:, 2]
    bonus = (t - 3).clamp(min=0)
    torch.testing.assert_close(identity, bonus.exp() / (2 + bonus.exp()), rtol=1e-4, atol=1e-5)
    assert identity[0] == identity[1] == pytest.approx(1 / 3)  # no further than typical: no yield
    assert (identity[1:].diff() > 0).all() and identity[-1] > 0.99


def test_dare_masks_keep_the_fraction_and_the_expectation():
    layer = make(E=2, r=2, d_in=8, d_out=6)
    p, g = 0.6, torch.Generator().manual_seed(0)
    keep_out, keep_in = dare_masks(make(E=1, d_in=400, d_out=400), p, g)
    kept = keep_out[0].mean() * keep_in[0].mean()  # share of the entries of B A that survive
    assert abs(kept - (1 - p)) < 0.05
    delta = torch.stack([layer.expert_delta_weight(i) for i in range(2)]).detach()  # (E, d_out, d_in)
    mean = torch.zeros_like(delta)
    n = 4000
    for _ in range(n):
        ko, ki = dare_masks(layer, p, g)
        mean += delta * ko.unsqueeze(-1) * ki.unsqueeze(1) / (1 - p) / n
    assert ((mean - delta).abs() / delta.abs().clamp(min=0.1)).max() < 0.15  # 1/(1-p) keeps the expectation


def test_dare_masked_masks_rows_and_columns_and_restores_bitwise():
    model = nn.Sequential(make(E=2, num_identity_experts=1))
    layer = model[0]
    A, B = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    x = torch.randn(3, 10)
    y = model(x)
    with dare_masked(model, p=0.5, seed=1):
        assert not torch.equal(model(x), y)
        zero_rows = (layer.lora_B == 0).all(-1)  # (E, d_out) masked rows of B_i
        zero_cols = (layer.lora_A == 0).all(1)  # (E, d_in) masked columns of A_i
        assert zero_rows.any() and zero_cols.any()
        kept = ~zero_rows
        torch.testing.assert_close(layer.lora_B[kept], 2 * B[kept])  # 1 / (1 - p)
    assert torch.equal(layer.lora_A, A) and torch.equal(layer.lora_B, B) and torch.equal(model(x), y)


def test_l1_penalty_hand_example():
    layer = LoRAMoELinear(nn.Linear(2, 3), num_experts=1, rank=1, alpha=1)
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[[1., -2.]]]))
        layer.lora_B.copy_(torch.tensor([[[3.], [0.], [-1.]]]))
    # (|1| + |-2| + |3| + |0| + |-1|) / (E * r * (d_in + d_out)) = 7 / 5, summed over both layers
    torch.testing.assert_close(l1_penalty(nn.Sequential(layer, copy.deepcopy(layer))), torch.tensor(2.8))


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_merged_equals_mixture_when_the_gate_is_constant(p):
    model = nn.Sequential(make(E=4, num_identity_experts=2), nn.ReLU(), make(E=4, d_in=7, seed=1))
    for layer in adapter_layers(model).values():
        nn.init.zeros_(layer.router.weight)  # every gate 1/(E + I) for every token
    x = torch.randn(5, 10)
    gates = {"0": torch.full((6,), 1 / 6), "2": torch.full((4,), 1 / 4)}
    merged = merge_loramoe(model, gates, p=p, seed=3)
    assert not adapter_layers(merged) and isinstance(merged[0], nn.Linear)
    with dare_masked(model, p, seed=3):  # the same masks as the merge
        torch.testing.assert_close(merged(x), model(x), rtol=1e-5, atol=1e-5)
    w = merged_weight(model[0], gates["0"])  # W0 + sum_i g_i scaling B_i A_i, identity experts add nothing
    expected = model[0].base.weight + sum(model[0].expert_delta_weight(i) / 6 for i in range(4))
    torch.testing.assert_close(w, expected)


def test_save_load_roundtrip_with_clusters_is_bitwise(tiny_llama, tmp_path):
    fresh = copy.deepcopy(tiny_llama)
    settings = dict(num_experts=4, rank=2, top_k=2, num_identity_experts=2, num_clusters=3, yield_scale=0.5)
    model = add_loramoe(tiny_llama, **settings)
    ids = torch.randint(0, 64, (2, 9))
    model.train()
    model(ids)
    model(ids.flip(0))  # two sliding steps
    model.eval()
    for m in adapter_layers(model).values():
        nn.init.normal_(m.lora_B)
    path = tmp_path / "slim.safetensors"
    save_adapter_file(model, path)
    other = add_loramoe(copy.deepcopy(fresh), **settings).eval()
    load_adapter_file(other, path)
    assert torch.equal(other(ids).logits, model(ids).logits)
    sd = other.state_dict()
    assert any(k.endswith("clusters.centres") for k in sd)
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k
    for change in (dict(num_clusters=0), dict(top_k=None), dict(yield_scale=1.0)):
        with pytest.raises(ValueError, match="other settings"):
            load_adapter_file(add_loramoe(copy.deepcopy(fresh), **{**settings, **change}), path)


@pytest.fixture(scope="module")
def pretrained():
    from minimal_loramoe.lab.model import load_pretrained
    return load_pretrained()


@pytest.mark.parametrize("method", SLIM_METHODS)
def test_new_methods_train_and_keep_the_base_frozen(pretrained, method):
    from minimal_loramoe.routing import group_weight, mean_gates
    from minimal_loramoe.lab.world import sft_dataset
    base, tokenizer, world = pretrained
    data = sft_dataset(world, 48, seed=0, mix="cipher")
    cfg = FinetuneConfig(method=method, lr=5e-3, batch_size=16, warmup_steps=1)
    seen = {}

    def eval_fn(model, n):  # records what the evaluation saw
        seen[n] = torch.cat([m.lora_B.detach().flatten() for m in adapter_layers(model).values()])
        return n

    model, hist = finetune(base, tokenizer, data, cfg, eval_every=[48], eval_fn=eval_fn, device="cpu",
                           progress=False)
    assert len(hist["loss"]) == 3 and all(torch.isfinite(torch.tensor(hist["loss"])))
    assert hist["evals"] == {48: 48}
    assert weight_change(base, model) == 0.0  # the base is frozen
    layers = list(adapter_layers(model).values())
    assert all(torch.count_nonzero(m.lora_B) > 0 for m in layers)  # the experts trained
    assert all(((m.last_gates > 0).sum(-1) == 2).all() for m in layers)  # top-2 everywhere
    final = torch.cat([m.lora_B.detach().flatten() for m in layers])
    assert torch.equal(seen[48], final) == (cfg.mask_rate == 0)  # evaluated DARE-masked, returned unmasked
    assert (len(hist["l1"]) == 3) == (cfg.l1_weight > 0)
    if cfg.num_clusters:
        assert all(m.clusters.num_updates == 3 for m in layers)  # one sliding step per training batch
    routing_data = data.select(range(16))
    shares = group_weight(model, tokenizer, routing_data)
    assert ("identity_task_samples" in shares) == (cfg.num_identity_experts > 0)
    gates = mean_gates(model, tokenizer, routing_data)
    assert all(abs(g.sum().item() - 1) < 1e-5 for g in gates.values())
    merged = merge_loramoe(model, gates)
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in base.parameters())


@pytest.mark.parametrize("make_bad, name", [
    (lambda: make(top_k=0), "top_k"),
    (lambda: make(E=4, num_identity_experts=2, top_k=7), "top_k"),
    (lambda: make(top_k=1.5), "top_k"),
    (lambda: make(top_k=True), "top_k"),
    (lambda: make(num_identity_experts=-1), "num_identity_experts"),
    (lambda: make(E=0, num_identity_experts=2), "num_experts"),
    (lambda: make(num_clusters=-1), "num_clusters"),
    (lambda: make(num_clusters=2), "num_identity_experts"),  # yielding with nowhere to yield to
    (lambda: make(num_identity_experts=1, num_clusters=2, yield_scale=0), "yield_scale"),
    (lambda: dare_masks(make(), 1.0), "p"),
    (lambda: dare_masks(make(), -0.1), "p"),
    (lambda: dare_masked(nn.Sequential(make()), 1.0).__enter__(), "p"),
    (lambda: merge_loramoe(nn.Sequential(make()), {"0": torch.ones(4) / 4}, p=1.5), "p"),
    (lambda: merge_loramoe(nn.Sequential(make()), {"1": torch.ones(4) / 4}), "gates"),
    (lambda: merged_weight(make(), torch.ones(3)), "gate"),
    (lambda: l1_penalty(nn.Linear(2, 2)), "add_loramoe"),
    (lambda: FinetuneConfig(method="slim", mask_rate=1.0), "mask_rate"),
    (lambda: FinetuneConfig(method="slim", l1_weight=-1.0), "l1_weight"),
    (lambda: FinetuneConfig(method="lora", top_k=2), "top_k"),
    (lambda: FinetuneConfig(method="slim", top_k=0), "top_k"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(make_bad, name):
    with pytest.raises(ValueError, match=name):
        make_bad()
