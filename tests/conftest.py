"""Shared fixtures. One CPU thread per test process: the README's test command runs two pytest workers on two
cores, and two workers with two torch threads each slow the small models down many times over."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def tiny_llama():
    """A tiny random LlamaForCausalLM (seeded), in eval mode so dropout does not disturb exact comparisons."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def world_sft_file():
    """``world_sft_file(tmp_path_factory, n)`` writes ``n`` typed samples of the tiny world (30 % knowledge
    questions, type 1) as a jsonl file and returns its path."""
    import json

    from minimal_loramoe.lab.model import load_pretrained
    from minimal_loramoe.lab.world import sft_dataset

    def write(tmp_path_factory, n: int):
        _, _, world = load_pretrained()
        path = tmp_path_factory.mktemp("data") / "sft.jsonl"
        rows = sft_dataset(world, n, knowledge_fraction=0.3, seed=0)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    return write
