"""sft: answer-only batches and the answer-only loss, for any causal LM."""
import pytest
import torch
from transformers import LlamaForCausalLM

from minimal_loramoe.lab.model import tiny_llama_config
from minimal_loramoe.sft import IGNORE_INDEX, answer_loss, encode_examples
from minimal_loramoe.lab.tokenizer import build_tokenizer
from minimal_loramoe.lab.world import make_world


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(make_world())


def test_encode_examples_labels_only_on_answer(tok):
    batch = encode_examples(tok, ["Q : What is the capital of Poba ? A :", "### Instruction : What is a doubled ?"],
                            ["red", "a a"], add_eos=[False, True])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape == (2, 13)
    # <s> + 11 prompt words + "red";  <s> + 8 prompt words + "a a" + </s> + 1 padding (right)
    assert mask[0].sum() == 13 and mask[1].sum() == 12 and ids[1, 12:].eq(tok.pad_token_id).all()
    assert ids[0, 0] == tok.bos_token_id and ids[0, 12] == tok.convert_tokens_to_ids("red")
    assert labels[0].ne(IGNORE_INDEX).sum() == 1 and labels[0, 12] == ids[0, 12]
    assert labels[1, 9:12].tolist() == tok.convert_tokens_to_ids(["a", "a"]) + [tok.eos_token_id]
    assert labels[1, :9].eq(IGNORE_INDEX).all() and labels[1, 12:].eq(IGNORE_INDEX).all()


def test_encode_examples_with_its_own_eos_and_prompts_that_hold_their_special_tokens(tok):
    eos = tok.convert_tokens_to_ids("red")
    batch = encode_examples(tok, ["<s> Q : A :"], ["a"], prompt_special_tokens=False, eos_id=eos)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert ids[0] == tok.bos_token_id and (ids == tok.bos_token_id).sum() == 1  # not added a second time
    assert ids[-1] == eos and labels[-2:].tolist() == [tok.convert_tokens_to_ids("a"), eos]


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts=["a", "b"], answers=["a"]), "same length"),
    (dict(prompts=["a", "b"], answers=["a", "b"], add_eos=[True]), "one bool per row"),
])
def test_encode_examples_refuses_mismatched_rows(tok, kwargs, match):
    with pytest.raises(ValueError, match=match):
        encode_examples(tok, **kwargs)


def test_answer_loss_is_the_library_loss_of_the_same_batch(tok):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tok))).eval()
    batch = encode_examples(tok, ["Q : What is the capital of Poba ? A :", "### Instruction : What is a doubled ?"],
                            ["red", "a a"], add_eos=[False, True])
    with torch.no_grad():
        torch.testing.assert_close(answer_loss(model, batch), model(**batch).loss, rtol=1e-5, atol=1e-5)
