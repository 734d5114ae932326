import math

import pytest
import torch
from torch import nn

from minimal_loramoe import GatedLoRALinear, LoRALinear


def test_shapes_init_and_scaling():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(10, 7), rank=3, alpha=6)
    assert layer.lora_A.shape == (3, 10) and layer.lora_B.shape == (7, 3)
    assert layer.scaling == 2.0
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(10)  # kaiming_uniform(a=sqrt(5)) bound for fan_in 10
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.5 * bound
    assert not any(p.requires_grad for p in layer.base.parameters())
    x = torch.randn(4, 10)
    assert torch.equal(layer(x), layer.base(x))  # zero B: exactly the frozen layer


def test_forward_is_the_lora_formula_and_merge_roundtrip():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(10, 7), rank=3, alpha=6)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 5, 10)
    expected = layer.base(x) + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)
    w0 = layer.base.weight.clone()
    layer.merge()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), expected)


def test_equals_peft_lora_with_same_weights():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.up_proj = nn.Linear(12, 20)

        def forward(self, x):
            return self.up_proj(x)

    ref = peft.get_peft_model(Tiny(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["up_proj"],
                                                     lora_dropout=0.0))
    peft_layer = ref.base_model.model.up_proj
    nn.init.normal_(peft_layer.lora_B["default"].weight)
    ours = LoRALinear(peft_layer.base_layer, rank=4, alpha=8)
    with torch.no_grad():
        ours.lora_A.copy_(peft_layer.lora_A["default"].weight)
        ours.lora_B.copy_(peft_layer.lora_B["default"].weight)
    x = torch.randn(3, 12)
    assert ours.scaling == peft_layer.scaling["default"]
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)


def test_gated_lora_scales_delta_by_sigmoid_gate():
    torch.manual_seed(0)
    layer = GatedLoRALinear(nn.Linear(6, 5), rank=2, alpha=4)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 6)
    gate = torch.sigmoid(layer.gate(x))
    expected = layer.base(x) + gate * layer.lora_delta(x)
    torch.testing.assert_close(layer(x), expected)
    assert layer.last_gates.shape == (3, 1)
    with pytest.raises(RuntimeError, match="cannot be merged"):
        layer.merge()


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=0, alpha=8), "rank must be an integer >= 1"),
    (dict(rank=2.5, alpha=8), "rank must be an integer >= 1"),
    (dict(rank=2, alpha=0), "alpha must be a number > 0"),
    (dict(rank=2, alpha=8, dropout=1.0), r"dropout must be a number in \[0, 1\)"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRALinear(nn.Linear(4, 4), **kwargs)


def test_base_must_be_linear():
    with pytest.raises(TypeError, match="base_layer must be an nn.Linear or a transformers Conv1D"):
        LoRALinear(nn.Conv1d(4, 4, 1), rank=2, alpha=4)
