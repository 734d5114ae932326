"""Pretrain the tiny LLaMA on the synthetic world (bios + closed-book QA + skill text).

This stands in for the pretraining of a real LLM: afterwards the model "knows" the world's facts -- including
those of held-out countries, which it only read about in bios -- and has the plain-text skills, but has never
seen the instruction format. Every batch is sampled fresh, so there are no epochs.

    python -m minimal_loramoe.lab.pretrain                  # -> runs/tiny_llama
    python -m minimal_loramoe.lab.pretrain --store          # rebuilds the shipped checkpoint minimal_loramoe/data/tiny_llama
    python -m minimal_loramoe.lab.pretrain --steps 300 --out /tmp/tiny
"""
import argparse
import math
import time

import numpy as np
import torch
from tqdm import tqdm  # text bars: widget bars cannot render in the static book
from transformers import LlamaForCausalLM

from .evaluate import knowledge_accuracy, task_accuracy
from . import resources
from .model import DEFAULT_CHECKPOINT, save_checkpoint, tiny_llama_config
from ..sft import IGNORE_INDEX
from .tokenizer import build_tokenizer
from ..utils import get_device, set_seed
from .world import World, WorldConfig, make_world, pretraining_batch, save_samples


def encode_documents(tokenizer, docs) -> dict:
    """``<s> doc </s>`` for each document, right-padded; the loss covers every real token (labels -100 on padding)."""
    ids = [x + [tokenizer.eos_token_id] for x in tokenizer(docs, add_special_tokens=True)["input_ids"]]
    T = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), T), tokenizer.pad_token_id, dtype=torch.long)   # (B, T)
    attention_mask = torch.zeros((len(ids), T), dtype=torch.long)                      # (B, T)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = torch.tensor(x)
        attention_mask[i, :len(x)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup for ``warmup`` steps, then cosine decay to 10% of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(world: World, tokenizer, steps: int = 600, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
             device=None, progress: bool = True, warmup: int = 100, weight_decay: float = 0.1):
    """Train a fresh tiny LLaMA on freshly sampled pretraining documents. Returns ``(model, history)``.

    ``history`` holds ``step``, ``loss`` and ``lr`` lists (one entry per step).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    device = get_device(device)
    set_seed(seed)
    rng = np.random.default_rng(seed)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer))).to(device)
    model.train()
    # nanoGPT's rule: decay matrices (incl. the tied embedding), not norm gains.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    history = {"step": [], "loss": [], "lr": []}
    bar = tqdm(range(steps), desc="pretraining", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        docs = pretraining_batch(world, batch_size, rng)  # fresh documents every step: no epochs
        batch = {k: v.to(device) for k, v in encode_documents(tokenizer, docs).items()}
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history["step"].append(step)
        history["loss"].append(loss.item())
        history["lr"].append(opt.param_groups[0]["lr"])
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model, history


def main(argv=None):
    parser = argparse.ArgumentParser(description="Pretrain the tiny LLaMA on the synthetic world and save it.")
    parser.add_argument("--out", help="checkpoint folder (default: runs/tiny_llama)")
    parser.add_argument("--store", action="store_true", help=resources.STORE_HELP)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--qa-doc-fraction", type=float, default=WorldConfig.qa_doc_fraction,
                        help="share of knowledge rows that are QA documents rather than bios")
    parser.add_argument("--samples", default=None, help="also write readable world samples to this folder")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    args.out = str(resources.cli_out(args.out, args.store, DEFAULT_CHECKPOINT, "tiny_llama"))
    if args.threads:
        torch.set_num_threads(args.threads)
    world = make_world(WorldConfig(seed=args.world_seed, qa_doc_fraction=args.qa_doc_fraction))
    tokenizer = build_tokenizer(world)
    start = time.time()
    model, history = pretrain(world, tokenizer, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              seed=args.seed)
    elapsed = time.time() - start
    save_checkpoint(model, tokenizer, world, args.out)
    if args.samples:
        save_samples(world, args.samples)
    print(f"pretrained {sum(p.numel() for p in model.parameters()):,} parameters in {elapsed:.0f} s, "
          f"final loss {np.mean(history['loss'][-20:]):.3f}; saved to {args.out}")
    for countries in ("heldout", "qa"):
        for fmt in ("qa", "instruction"):
            acc = knowledge_accuracy(model, tokenizer, world, countries, fmt)
            print(f"knowledge accuracy, {countries} countries, {fmt} format: {acc:.3f}")
    mean, per_task = task_accuracy(model, tokenizer, world)
    print(f"downstream task accuracy (instruction format): {mean:.3f} {per_task}")


if __name__ == "__main__":
    main()
