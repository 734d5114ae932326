"""Where does an adapter act, and how does its router decide? Measured on adapters kept in the run store.

``python -m minimal_loramoe.lab.mechanism --mix cipher --lr 5e-4 --seeds 0 1 2`` loads the adapters that
``fronts`` kept (``runs.RunKey.adapter_path``) for LoRA, gated LoRA and LoRAMoE and measures, on held-out knowledge
questions (pretraining format), task prompts and (cipher mix) the new-content questions:

* ``effect``: the adapter's relative contribution  rho = ||y - W0 x|| / ||W0 x||, averaged over adapter layers and
  real tokens (chapter 8);
* ``gate``: LoRAMoE: the mean largest router gate per token (1/E = uniform); gated LoRA: the mean sigmoid gate;
* ``knowledge_group_weight``: LoRAMoE: the share of gate weight on experts n < E/2, per input kind;
* ``forced``: LoRAMoE: accuracy with the router's choice, with the knowledge group only, with the task group only
  (``routing.force_group``).

Writes ``{"mix", "lr", "points": {method: {seed: {...}}}}`` as JSON.
"""
import argparse
import json
from pathlib import Path

import torch

from .evaluate import answer_accuracy
from ..sft import encode_examples
from ..finetune import FinetuneConfig, prepare_model
from ..inject import adapter_layers, load_adapter_file
from ..loramoe import LoRAMoELinear
from ..lora import GatedLoRALinear
from .model import load_pretrained
from .reproduce import DEFAULT_CHECKPOINT, RUNS_DIR
from .runs import RunKey
from ..routing import force_group, group_weight
from .world import CIPHER, MIXES, knowledge_eval, new_content_eval, task_eval

MEASURED = ("lora", "gated_lora", "loramoe")


def load_stored(base, mix: str, method: str, lr: float, seed: int, root=RUNS_DIR):
    """A copy of ``base`` with the adapters the run store kept for ``(mix, method, lr, seed)``."""
    path = RunKey(mix, method, lr, seed).adapter_path(root)
    if not path.is_file():
        raise FileNotFoundError(f"no kept adapters at {str(path)!r}: run `python -m minimal_loramoe.lab.fronts run "
                                f"... --keep-adapters` for this point first")
    model = prepare_model(base, FinetuneConfig(method=method, lr=lr, seed=seed))
    return load_adapter_file(model, path).eval()


@torch.no_grad()
def _over_tokens(model, tokenizer, dataset, per_layer, batch_size=256):
    """Mean over adapter layers and real tokens of ``per_layer(layer, layer_input, layer_output) -> (B, T)``."""
    device = next(model.parameters()).device
    values = {}

    def hook(name):
        def record(module, args, out):
            values[name] = per_layer(module, args[0], out)
        return record

    handles = [layer.register_forward_hook(hook(n)) for n, layer in adapter_layers(model).items()]
    total = count = 0.0
    try:
        for start in range(0, len(dataset), batch_size):
            rows = dataset[start:start + batch_size]
            batch = encode_examples(tokenizer, rows["prompt"], rows["answer"], add_eos=True)
            mask = batch["attention_mask"].to(device)
            model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
            for v in values.values():
                total += (v.float() * mask).sum().item()
                count += mask.sum().item()
    finally:
        for h in handles:
            h.remove()
    return total / count


def adapter_effect(model, tokenizer, dataset, batch_size: int = 256) -> float:
    """rho = ||y - W0 x|| / ||W0 x|| of every adapter layer, averaged over layers and real tokens."""
    def rho(module, x, out):
        frozen = module.base_layer(x)  # (B, T, d_out)
        return (out - frozen).norm(dim=-1) / frozen.norm(dim=-1).clamp(min=1e-8)  # (B, T)
    return _over_tokens(model, tokenizer, dataset, rho, batch_size)


def mean_gate(model, tokenizer, dataset, batch_size: int = 256) -> float:
    """LoRAMoE: the mean largest gate per token; gated LoRA: the mean sigmoid gate. Over layers and real tokens."""
    def gate(module, x, out):
        if isinstance(module, LoRAMoELinear):
            return module.last_gates.max(-1).values  # (B, T)
        if isinstance(module, GatedLoRALinear):
            return module.last_gates.squeeze(-1)  # (B, T)
        raise ValueError(f"{type(module).__name__} has no gate")
    return _over_tokens(model, tokenizer, dataset, gate, batch_size)


def measure_point(model, method: str, tokenizer, sets: dict) -> dict:
    """Every measurement of the module docstring for one model; ``sets``: ``{input kind: dataset}``."""
    out = {"effect": {k: adapter_effect(model, tokenizer, d) for k, d in sets.items()}}
    if method == "lora":
        return out
    out["gate"] = {k: mean_gate(model, tokenizer, d) for k, d in sets.items()}
    if method == "gated_lora":
        return out
    out["knowledge_group_weight"] = {
        k: group_weight(model, tokenizer, d.remove_columns("type").add_column("type", [1] * len(d)))["knowledge_samples"] for k, d in sets.items()}

    def accuracy():
        return {k: answer_accuracy(model, tokenizer, d) for k, d in sets.items()}

    out["forced"] = {"router": accuracy()}
    for group in ("knowledge", "task"):
        with force_group(model, group):
            out["forced"][f"{group}_group_only"] = accuracy()
    return out


def measure(mix: str, lr: float, seeds, methods=MEASURED, root=RUNS_DIR, n_per_task: int = 100) -> dict:
    """Load every kept adapter of ``methods`` x ``seeds`` at ``lr`` and measure it (the JSON of the module)."""
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {MIXES}, got {mix!r}")
    base, tokenizer, world = load_pretrained(DEFAULT_CHECKPOINT)
    sets = {"knowledge": knowledge_eval(world, "heldout", "qa"),
            "knowledge_instruction": knowledge_eval(world, "heldout", "instruction"),
            "tasks": task_eval(world, n_per_task)}
    if mix == CIPHER:
        sets["new_content"] = new_content_eval(world)
    out = {"mix": mix, "lr": lr, "sets": {k: len(d) for k, d in sets.items()}, "points": {}}
    for method in methods:
        for seed in seeds:
            model = load_stored(base, mix, method, lr, seed, root)
            out["points"].setdefault(method, {})[str(seed)] = measure_point(model, method, tokenizer, sets)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], prog="python -m minimal_loramoe.lab.mechanism")
    p.add_argument("--mix", choices=MIXES, default=CIPHER)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=MEASURED, default=list(MEASURED))
    p.add_argument("--out", help="JSON to write (default: print only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)
    if args.out and Path(args.out).exists() and not args.overwrite:
        p.error(f"--out {args.out!r} exists: pass --overwrite to replace it")
    torch.set_num_threads(1)
    res = measure(args.mix, args.lr, args.seeds, args.methods)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
