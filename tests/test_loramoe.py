import pytest
import torch
from torch import nn

from minimal_loramoe import LoRAMoELinear


def make(E=4, r=3, d_in=10, d_out=7, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    layer = LoRAMoELinear(nn.Linear(d_in, d_out, dtype=dtype), num_experts=E, rank=r, alpha=6)
    nn.init.normal_(layer.lora_B)  # non-zero experts, so the test can tell them apart
    return layer


def test_parameter_layout():
    layer = LoRAMoELinear(nn.Linear(10, 7), num_experts=4, rank=3, alpha=6)
    assert layer.lora_A.shape == (4, 3, 10)
    assert layer.lora_B.shape == (4, 7, 3)
    assert isinstance(layer.router, nn.Linear) and layer.router.bias is None
    assert layer.router.weight.shape == (4, 10)
    assert layer.scaling == 2.0
    assert torch.count_nonzero(layer.lora_B) == 0
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"lora_A", "lora_B", "router.weight"}


def test_identity_at_init_is_bitwise():
    torch.manual_seed(0)
    layer = LoRAMoELinear(nn.Linear(10, 7), num_experts=6, rank=4, alpha=32)
    x = torch.randn(2, 5, 10)
    assert torch.equal(layer(x), layer.base(x))


def test_fused_equals_per_expert_sum_of_the_paper():
    layer = make()
    x = torch.randn(2, 5, 10)
    g = torch.softmax(x @ layer.router.weight.T, dim=-1)  # (B, T, E)
    expected = layer.base(x)
    for i in range(layer.num_experts):  # y = W0 x + b + sum_i g_i * scaling * B_i A_i x
        expected = expected + g[..., i:i + 1] * layer.scaling * (x @ layer.lora_A[i].T @ layer.lora_B[i].T)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.forward_loop(x), expected, rtol=1e-5, atol=1e-5)


def test_gates_are_float32_dense_softmax_and_kept():
    layer = make(dtype=torch.bfloat16)
    x = torch.randn(3, 4, 10, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    g = layer.last_gates
    assert g.dtype == torch.float32 and g.shape == (3, 4, 4)
    torch.testing.assert_close(g.sum(-1), torch.ones(3, 4))
    assert (g > 0).all()  # dense: every expert gets a weight


def test_gradients_reach_experts_and_router_only():
    layer = make()
    x = torch.randn(2, 5, 10)
    (layer(x) ** 2).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0
    assert layer.lora_B.grad is not None and layer.router.weight.grad.abs().sum() > 0
    assert layer.base.weight.grad is None


def test_fused_gradients_equal_loop_gradients():
    layer = make()
    x = torch.randn(2, 5, 10)
    (layer(x) ** 2).sum().backward()
    fused = [p.grad.clone() for p in (layer.lora_A, layer.lora_B, layer.router.weight)]
    layer.zero_grad()
    (layer.forward_loop(x) ** 2).sum().backward()
    for a, p in zip(fused, (layer.lora_A, layer.lora_B, layer.router.weight)):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-4)


def test_expert_delta_weight():
    layer = make()
    x = torch.randn(5, 10)
    torch.testing.assert_close(x @ layer.expert_delta_weight(1).T,
                               layer.scaling * x @ layer.lora_A[1].T @ layer.lora_B[1].T)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_experts=0, rank=4, alpha=8), "num_experts must be an integer >= 1"),
    (dict(num_experts=4, rank=0, alpha=8), "rank must be an integer >= 1"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRAMoELinear(nn.Linear(4, 4), **kwargs)


def test_base_must_be_linear():
    with pytest.raises(TypeError, match="base_layer must be an nn.Linear or a transformers Conv1D"):
        LoRAMoELinear(nn.Embedding(4, 4), num_experts=2, rank=2, alpha=4)
