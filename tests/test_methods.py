"""The table of methods: each entry is what FinetuneConfig, prepare_model and sft_loop do with the method."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from minimal_loramoe import GatedLoRALinear, LoRALinear, LoRAMoELinear, adapter_layers, methods
from minimal_loramoe.lab import fronts, report, tune
from minimal_loramoe.finetune import FinetuneConfig, prepare_model
from minimal_loramoe.methods import TABLE, Method, get_method, method_of_adapter

LAYER = {"LORA": LoRALinear, "GATED_LORA": GatedLoRALinear, "LORAMOE": LoRAMoELinear}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("name", list(TABLE))
def test_each_entry_is_what_the_config_and_the_prepared_model_get(name, tiny):
    m = TABLE[name]
    config = FinetuneConfig(method=name)
    for key, value in {**methods.PLAIN_SETTINGS, **m.settings}.items():
        assert getattr(config, key) == value, key
    model = prepare_model(tiny, config)
    layers = adapter_layers(model)
    if m.adapter is None:
        assert not layers and all(p.requires_grad for p in model.parameters())
        return
    assert layers and all(type(layer) is LAYER[m.adapter] for layer in layers.values())
    assert config.adapter_config().peft_type == m.adapter
    if m.adapter == "LORAMOE":
        layer = next(iter(layers.values()))
        assert layer.top_k == config.top_k and layer.num_identity_experts == config.num_identity_experts
        assert (layer.clusters is not None) == bool(config.num_clusters)
        assert layer.router.weight.requires_grad is not m.frozen_router
    assert m.lr_grid and list(m.lr_grid) == sorted(m.lr_grid)


def test_the_views_are_the_table():
    assert methods.METHODS == tuple(TABLE) and fronts.GRIDS == {n: m.lr_grid for n, m in TABLE.items()}
    assert methods.LBC_OF_METHOD == {"loramoe_official_lbc": "official", "loramoe": "corrected",
                                     "loramoe_swapped_lbc": "swapped", "loramoe_mean_lbc": "mean"}
    assert methods.SLIM_METHODS == ("mixlora_top2", "slim", "slim_no_identity", "slim_no_yield", "slim_no_merge")
    assert tune.TUNED_METHODS == ("full_ft", "lora", "gated_lora", "loramoe", "loramoe_uniform_router")
    assert tune.SHARES_LR_OF == {"loramoe_no_lbc": "loramoe", "loramoe_official_lbc": "loramoe"}
    variants = {n for n, m in TABLE.items() if m.variant_of is not None}
    assert set(methods.FRONTS_ONLY) == set(methods.SLIM_METHODS) | {"loramoe_swapped_lbc", "loramoe_mean_lbc"} | variants
    assert set(methods.MIXTURE_METHODS) == ({n for n in TABLE if n.startswith("loramoe")} | set(methods.SLIM_METHODS)
                                            | variants)


def test_slims_grid_is_every_l1_weight_by_every_dare_rate_with_its_corners():
    grid = methods.SLIM_GRID
    assert set(grid) == {(l1, p) for l1 in methods.SLIM_L1_WEIGHTS for p in methods.SLIM_MASK_RATES}
    assert grid[10.0, 0.5] == "slim" and grid[0.0, 0.0] == "slim_no_merge" and grid[1.0, 0.1] == "slim_l1w1_p0.1"
    for (l1, p), name in grid.items():
        m = TABLE[name]
        assert m.settings["l1_weight"] == l1 and m.settings["mask_rate"] == p
        assert {k: v for k, v in m.settings.items() if k not in ("l1_weight", "mask_rate")} == {
            k: v for k, v in TABLE["slim"].settings.items() if k not in ("l1_weight", "mask_rate")}
        assert m.variant_of == ("slim" if name not in ("slim", "slim_no_merge") else None)
    assert report.color_of("slim_l1w1_p0.1") == report.color_of("slim")


def test_an_adapter_kind_maps_back_to_its_plain_method():
    assert [method_of_adapter(a) for a in methods.ADAPTERS] == ["full_ft", "lora", "gated_lora", "loramoe_no_lbc"]
    with pytest.raises(ValueError, match="adapter"):
        method_of_adapter("IA3")


@pytest.mark.parametrize("kwargs, match", [
    (dict(adapter="IA3"), "adapter"),
    (dict(adapter="LORA", lbc="corrected"), "LORAMOE"),
    (dict(adapter="LORAMOE", settings={"rank": 2}), "unknown settings"),
    (dict(adapter="LORAMOE", lbc="strict"), "lbc"),
    (dict(adapter="LORAMOE", tuned=True, lr_of="loramoe"), "not both"),
])
def test_a_bad_entry_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Method("x", description="", **kwargs)


def test_an_entry_cannot_be_changed():
    m = get_method("slim")
    with pytest.raises(AttributeError):
        m.lbc = "corrected"
    with pytest.raises(TypeError):
        m.settings["top_k"] = 3
    with pytest.raises(ValueError, match="method must be one of"):
        get_method("nope")
