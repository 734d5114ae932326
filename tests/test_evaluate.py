from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import LlamaForCausalLM

from minimal_loramoe.lab.evaluate import answer_accuracy
from minimal_loramoe.lab.model import tiny_llama_config
from minimal_loramoe.lab.tokenizer import build_tokenizer
from minimal_loramoe.lab.world import instruction_prompt, make_world


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(make_world())


class FixedToken(nn.Module):
    """A dummy LM whose argmax is always the same token."""

    def __init__(self, vocab_size, token_id):
        super().__init__()
        self.token_id, self.vocab_size = token_id, vocab_size
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., self.token_id] = 1.0
        return SimpleNamespace(logits=logits)


def test_answer_accuracy_on_a_fixed_token_model(tok):
    model = FixedToken(len(tok), tok.convert_tokens_to_ids("red")).train()
    ds = Dataset.from_dict({
        "prompt": ["Q : What colour is the flag of Poba ? A :", "Q : What is the capital of Poba ? A :",
                   instruction_prompt("What colour is the flag of Poba ?"), "Q : What is a b doubled ? A :"],
        "answer": ["red", "blue", "red", "red red"],
        "task": ["x", "x", "y", "y"]})
    # rows 1 and 4 are right; row 3 misses the eos an instruction answer needs
    assert answer_accuracy(model, tok, ds, batch_size=3) == 0.5
    assert answer_accuracy(model, tok, ds, by_task=True) == {"x": 0.5, "y": 0.5}
    assert model.training  # the previous mode is restored


def test_answer_accuracy_equals_greedy_decoding(tok):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tok))).eval()
    prompts = ["Q : What is the capital of Poba ? A :", "the flag of Poba is", "3 plus 4 makes", "Q : When was"]
    answers = []
    for p, n in zip(prompts, [1, 3, 2, 4]):  # greedy-decode n tokens after each prompt
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            for _ in range(n):
                ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
        answers.append(tok.decode(ids[0, -n:]))
    assert answer_accuracy(model, tok, {"prompt": prompts, "answer": answers}) == 1.0
    wrong = [" ".join(a.split()[:-1] + ["Poba" if a.split()[-1] != "Poba" else "red"]) for a in answers]
    assert answer_accuracy(model, tok, {"prompt": prompts, "answer": wrong}) == 0.0


def test_bad_dataset_raises(tok):
    model = FixedToken(len(tok), 5)
    with pytest.raises(ValueError, match="prompt"):
        answer_accuracy(model, tok, {"question": ["x"]})
