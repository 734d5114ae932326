"""pretrain: documents as batches, the learning-rate schedule, and a few steps of pretraining."""
import math

import pytest
import torch

from minimal_loramoe.lab.pretrain import encode_documents, lr_at, pretrain
from minimal_loramoe.sft import IGNORE_INDEX
from minimal_loramoe.lab.tokenizer import build_tokenizer
from minimal_loramoe.lab.world import make_world


@pytest.fixture(scope="module")
def world_and_tok():
    world = make_world()
    return world, build_tokenizer(world)


def test_encode_documents_trains_on_every_real_token_and_eos(world_and_tok):
    _, tok = world_and_tok
    batch = encode_documents(tok, ["Q : What is the capital of Poba ? A : red", "Q : A : red"])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 2
    assert ids[0, 0] == tok.bos_token_id and ids[0, mask[0].sum() - 1] == tok.eos_token_id
    assert torch.equal(labels == IGNORE_INDEX, mask == 0)  # padding only


def test_lr_at_warms_up_then_decays_to_a_tenth():
    lr, steps, warmup = 1.0, 100, 10
    assert lr_at(0, steps, lr, warmup) == pytest.approx(0.1)
    assert lr_at(warmup - 1, steps, lr, warmup) == pytest.approx(1.0)
    assert lr_at(warmup, steps, lr, warmup) == pytest.approx(1.0)
    assert lr_at(steps, steps, lr, warmup) == pytest.approx(0.1)
    mid = warmup + (steps - warmup) // 2
    assert lr_at(mid, steps, lr, warmup) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.slow
def test_a_few_steps_of_pretraining_lower_the_loss_and_repeat_exactly(world_and_tok):
    world, tok = world_and_tok
    kwargs = dict(steps=8, batch_size=4, lr=3e-3, warmup=2, device="cpu", progress=False)
    model, history = pretrain(world, tok, **kwargs)
    assert history["step"] == list(range(8)) and len(history["loss"]) == len(history["lr"]) == 8
    assert history["loss"][-1] < history["loss"][0] and not model.training
    _, again = pretrain(world, tok, **kwargs)
    assert again["loss"] == history["loss"]


def test_pretrain_refuses_empty_runs(world_and_tok):
    world, tok = world_and_tok
    with pytest.raises(ValueError, match="steps and batch_size"):
        pretrain(world, tok, steps=0)
