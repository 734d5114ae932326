import pytest
import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from minimal_loramoe import (LoRAMoELinear, add_gated_lora, add_lora, add_loramoe, adapter_layers,
                             count_parameters, load_adapter_file, save_adapter_file)


def test_identity_at_init_llama(tiny_llama):
    ids = torch.randint(0, 64, (2, 9))
    before = tiny_llama(ids).logits
    add_loramoe(tiny_llama)
    assert torch.equal(tiny_llama(ids).logits, before)
    layers = adapter_layers(tiny_llama)
    assert len(layers) == 6 and all(isinstance(m, LoRAMoELinear) for m in layers.values())
    assert {n.rsplit(".", 1)[-1] for n in layers} == {"gate_proj", "up_proj", "down_proj"}


def test_identity_at_init_qwen2():
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = Qwen2ForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 9))
    before = model(ids).logits
    add_loramoe(model, num_experts=4, rank=2)
    assert torch.equal(model(ids).logits, before)


def test_only_adapters_train_and_base_is_bitwise_unchanged(tiny_llama):
    base = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    model = add_loramoe(tiny_llama, num_experts=4, rank=2, dropout=0.0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "weight") for n in trainable)
    assert all(("lora_" in n) or (".router." in n) for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    ids = torch.randint(0, 64, (2, 9))
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    for k, v in base.items():  # the frozen weights now live under `<name>.base_layer.weight`
        k2 = k if k in after else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[k2], v), k
    assert any(torch.count_nonzero(m.lora_B) > 0 for m in adapter_layers(model).values())


def test_parameter_count_equals_one_lora_of_rank_E_times_r_plus_routers(tiny_llama):
    import copy
    moe = add_loramoe(copy.deepcopy(tiny_llama), num_experts=6, rank=4)
    lora = add_lora(copy.deepcopy(tiny_llama), rank=24)
    routers = sum(m.router.weight.numel() for m in adapter_layers(moe).values())
    assert count_parameters(moe)[0] == count_parameters(lora)[0] + routers


def test_save_load_roundtrip_is_bitwise(tiny_llama, tmp_path):
    import copy
    fresh = copy.deepcopy(tiny_llama)
    model = add_loramoe(tiny_llama, num_experts=4, rank=2)
    for m in adapter_layers(model).values():
        nn.init.normal_(m.lora_B)
    path = tmp_path / "adapter.safetensors"
    save_adapter_file(model, path)
    other = add_loramoe(fresh, num_experts=4, rank=2)
    load_adapter_file(other, path)
    ids = torch.randint(0, 64, (2, 9))
    assert torch.equal(other(ids).logits, model(ids).logits)
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    # only adapters were written: far smaller than the model
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        assert all(("lora_" in k) or ("router" in k) for k in f.keys())


def test_load_refuses_other_settings_and_missing_file(tiny_llama, tmp_path):
    import copy
    fresh = copy.deepcopy(tiny_llama)
    model = add_loramoe(tiny_llama, num_experts=4, rank=2)
    path = tmp_path / "adapter.safetensors"
    save_adapter_file(model, path)
    with pytest.raises(ValueError, match="other settings"):
        load_adapter_file(add_loramoe(fresh, num_experts=6, rank=2), path)
    with pytest.raises(FileNotFoundError, match="no adapter file"):
        load_adapter_file(model, tmp_path / "missing.safetensors")


def test_bad_inputs(tiny_llama):
    with pytest.raises(ValueError, match="target_modules=.*matches no nn.Linear"):
        add_loramoe(tiny_llama, target_modules=("c_fc",))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        add_loramoe("llama")
    with pytest.raises(ValueError, match="num_experts must be an integer >= 1"):
        add_loramoe(tiny_llama, num_experts=0)


def test_other_adapters_inject(tiny_llama):
    import copy
    ids = torch.randint(0, 64, (1, 5))
    before = tiny_llama(ids).logits
    lora = add_lora(copy.deepcopy(tiny_llama), rank=8, dropout=0.0)
    assert torch.equal(lora(ids).logits, before)
    gated = add_gated_lora(copy.deepcopy(tiny_llama), rank=8, dropout=0.0)
    assert torch.equal(gated(ids).logits, before)
