"""The one SFT loop (minimal_loramoe.finetune): data order, schedule, settings and data checks."""
import math

import pytest
import torch
from datasets import Dataset

from minimal_loramoe import add_loramoe, save_adapter_file
from minimal_loramoe.finetune import (FinetuneConfig, batch_indices, check_sft_dataset, finetune, lr_factor,
                                      prepare_model, sft_loop)
from minimal_loramoe.lab.model import load_pretrained
from minimal_loramoe.lab.world import sft_dataset


def test_one_pass_sees_every_row_once_in_a_seeded_order():
    batches = batch_indices(10, 4, steps=None, seed=0)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(sum(batches, [])) == list(range(10))
    assert batches == batch_indices(10, 4, None, seed=0) != batch_indices(10, 4, None, seed=1)


def test_fixed_steps_cycle_through_full_batches():
    batches = batch_indices(10, 4, steps=7, seed=0)
    assert len(batches) == 7 and all(len(b) == 4 for b in batches)
    assert batches[:2] == batch_indices(10, 4, None, seed=0)[:2]  # the first epoch is the one-pass order
    for epoch in (batches[0:2], batches[2:4], batches[4:6]):  # 2 full batches per epoch, no row twice in one
        rows = sum(epoch, [])
        assert len(set(rows)) == 8
    with pytest.raises(ValueError, match="global batch"):
        batch_indices(3, 4, steps=1, seed=0)


def test_schedules():
    c = FinetuneConfig(warmup_steps=4)
    f = lr_factor(c, 100)
    assert [f(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0] and f(99) == 1.0
    cos = lr_factor(FinetuneConfig(warmup_steps=0, schedule="cosine"), 10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    assert cos(3) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="adapter"), "method must be one of"),
    (dict(lr=0), "lr must be > 0"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(steps=0), "steps must be >= 1"),
    (dict(schedule="linear"), r"schedule must be one of \('constant', 'cosine'\)"),
    (dict(warmup_steps=-1), "warmup_steps must be >= 0"),
    (dict(num_experts=5), "num_experts must be even for method 'loramoe'"),
])
def test_config_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**kwargs)
    FinetuneConfig(method="loramoe_no_lbc", num_experts=5)  # no constraint: any expert count


def test_dataset_check():
    good = {"prompt": ["p"], "answer": ["a"], "type": [1]}
    check_sft_dataset(Dataset.from_dict(good))
    with pytest.raises(ValueError, match=r"missing \['type'\]"):
        check_sft_dataset(Dataset.from_dict({"prompt": ["p"], "answer": ["a"]}))
    with pytest.raises(ValueError, match=r"only 0 \(other task\) and 1 \(world knowledge\), got \[1, 2\]"):
        check_sft_dataset(Dataset.from_dict({**good, "prompt": ["p", "q"], "answer": ["a", "b"], "type": [1, 2]}))
    with pytest.raises(ValueError, match="datasets.Dataset"):
        check_sft_dataset([{"prompt": "p", "answer": "a", "type": 0}])
    with pytest.raises(ValueError, match="empty"):
        check_sft_dataset(Dataset.from_dict({"prompt": [], "answer": [], "type": []}))


def test_fixed_steps_run_and_eval_points():
    base, tok, world = load_pretrained()
    data = sft_dataset(world, 20, seed=0)
    cfg = FinetuneConfig(method="loramoe", batch_size=8, steps=4, schedule="cosine", warmup_steps=1)
    model, hist = finetune(base, tok, data, cfg, eval_every=[16, 32], eval_fn=lambda m, n: n, progress=False)
    assert len(hist["loss"]) == len(hist["lbc"]) == 4 and hist["evals"] == {16: 16, 32: 32}
    assert hist["config"]["steps"] == 4 and not model.training
    with pytest.raises(ValueError, match="sees only 32"):
        finetune(base, tok, data, cfg, eval_every=[40], progress=False)


def test_prepare_model_copies_unless_asked_not_to(tiny_llama):
    cfg = FinetuneConfig(method="lora")
    copy = prepare_model(tiny_llama, cfg)
    assert copy is not tiny_llama and not hasattr(tiny_llama, "minimal_loramoe_config")
    same = prepare_model(tiny_llama, cfg, copy_model=False)
    assert same is tiny_llama and hasattr(tiny_llama, "minimal_loramoe_config")


def test_save_loramoe_takes_a_gathered_state_dict(tiny_llama, tmp_path):
    add_loramoe(tiny_llama, num_experts=2, rank=2)
    from minimal_loramoe.inject import adapter_state_dict, load_adapter_file
    state = {k: torch.full_like(v, 0.5) for k, v in adapter_state_dict(tiny_llama).items()}
    save_adapter_file(tiny_llama, tmp_path / "a.safetensors", state_dict=state)
    load_adapter_file(tiny_llama, tmp_path / "a.safetensors")
    assert all((v == 0.5).all() for v in adapter_state_dict(tiny_llama).values())
    with pytest.raises(ValueError, match="exactly the model's adapter tensors"):
        save_adapter_file(tiny_llama, tmp_path / "b.safetensors", state_dict=dict(list(state.items())[:1]))


@pytest.mark.parametrize("kind, zero_stage, config", [
    ("FSDP", None, FinetuneConfig(method="slim")),
    ("DEEPSPEED", 3, FinetuneConfig(method="loramoe", l1_weight=1.0)),
])
def test_l1_penalty_is_refused_when_parameters_are_sharded(tiny_llama, kind, zero_stage, config):
    """FSDP and ZeRO-3 hold only a shard of each adapter outside the forward pass: the penalty would see that."""
    from types import SimpleNamespace
    deepspeed = SimpleNamespace(zero_stage=zero_stage) if zero_stage else None
    accelerator = SimpleNamespace(process_index=0, num_processes=2, distributed_type=f"DistributedType.{kind}",
                                  state=SimpleNamespace(deepspeed_plugin=deepspeed))
    model = prepare_model(tiny_llama, config)
    data = Dataset.from_dict({"prompt": ["p"] * 4, "answer": ["a"] * 4, "type": [1, 0, 1, 0]})
    with pytest.raises(ValueError, match="FSDP and DeepSpeed ZeRO-3 shard"):
        sft_loop(model, None, data, config, accelerator=accelerator, progress=False)
