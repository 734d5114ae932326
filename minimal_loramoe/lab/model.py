"""The tiny LLaMA that plays the "pretrained LLM" of the paper, and its shipped checkpoint.

It is an ordinary Hugging Face ``LlamaForCausalLM`` (RMSNorm, rotary positions, SwiGLU FFN with ``gate_proj``,
``up_proj``, ``down_proj`` -- the three linears LoRAMoE plugs into), only very small: hidden 128, 2 layers,
FFN 256, 4 heads, tied input/output embeddings. About 0.45 M parameters, so one SFT run takes seconds on a CPU.
"""
import os
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from .resources import CHECKPOINT_DIR
from ..utils import get_device
from .world import World, save_world_config, world_from_json

# the shipped checkpoint: package data (minimal_loramoe/data/tiny_llama), found wherever the package is installed
DEFAULT_CHECKPOINT = CHECKPOINT_DIR
WORLD_CONFIG_FILE = "world_config.json"


def tiny_llama_config(vocab_size: int, **overrides) -> LlamaConfig:
    """The tiny LLaMA's config; any field can be overridden (e.g. ``num_hidden_layers=4``)."""
    if vocab_size < 4:
        raise ValueError(f"vocab_size must be >= 4 (the special tokens), got {vocab_size}")
    settings = dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                    tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                    attention_dropout=0.0, rms_norm_eps=1e-5)
    settings.update(overrides)
    return LlamaConfig(**settings)


def _resolve_checkpoint(path) -> Path:
    path = Path(path)
    if path.is_dir() and (path / WORLD_CONFIG_FILE).is_file():
        return path
    raise FileNotFoundError(f"no tiny LLaMA checkpoint at {str(path)!r}; create it with "
                            f"`python -m minimal_loramoe.lab.pretrain --out {path}` (about 2-3 minutes on a CPU)")


def load_pretrained(path=DEFAULT_CHECKPOINT, device=None):
    """Load the shipped (or any saved) checkpoint: returns ``(model, tokenizer, world)``; the model is in eval mode.

    The world is rebuilt from the ``world_config.json`` stored beside the weights, so facts and token ids match
    what the model was pretrained on.
    """
    path = _resolve_checkpoint(path)
    world = world_from_json(path / WORLD_CONFIG_FILE)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    # The checkpoint loads in milliseconds: transformers' "Loading weights" bar would only add noise to outputs.
    was_disabled = not hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = LlamaForCausalLM.from_pretrained(path).float().to(get_device(device))  # float32 everywhere
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()
    model.eval()
    return model, tokenizer, world


def save_checkpoint(model, tokenizer, world: World, path) -> None:
    """Write model weights (safetensors), tokenizer files and ``world_config.json`` into the folder ``path``."""
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    save_world_config(world, os.path.join(path, WORLD_CONFIG_FILE))
