"""Exact-match evaluation on the tiny world by one teacher-forced forward pass.

A row counts as correct iff the model's argmax equals the answer token at *every* answer position (and at the
``</s>`` after it for instruction-format rows). With the true answer fed in (teacher forcing) this is exactly
"greedy decoding reproduces the answer": greedy decoding stays on the answer as long as every argmax is right, and
the first wrong argmax makes both checks fail. One forward pass for a whole batch is much faster than decoding.
For the one-token answers of the knowledge questions it is next-token exact match, the closed-book QA metric.
"""
import torch

from ..sft import IGNORE_INDEX, answer_logits, encode_examples
from .world import TASKS, World, is_instruction, knowledge_eval, task_eval


def _columns(dataset):
    try:
        return list(dataset["prompt"]), list(dataset["answer"])
    except (KeyError, TypeError) as err:
        raise ValueError("dataset must have 'prompt' and 'answer' columns (see minimal_loramoe.lab.world)") from err


@torch.no_grad()
def row_correct(model, tokenizer, prompts, answers, batch_size: int = 256) -> torch.Tensor:
    """Bool tensor (N,): is each row's answer (+ eos for instruction prompts) the model's argmax everywhere?"""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            p, a = prompts[start:start + batch_size], answers[start:start + batch_size]
            batch = encode_examples(tokenizer, p, a, add_eos=[is_instruction(x) for x in p])
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            target = batch["labels"][:, 1:].to(device)                         # (B, T-1): token t+1
            scored = target != IGNORE_INDEX                                    # (B, T-1)
            rows, cols = scored.nonzero(as_tuple=True)                         # the answer positions only
            pred = answer_logits(model, ids, mask, rows, cols).argmax(-1)     # (N,)
            hit = torch.ones_like(scored)
            hit[rows, cols] = pred == target[rows, cols]
            out.append(hit.all(dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def answer_accuracy(model, tokenizer, dataset, batch_size: int = 256, by_task: bool = False):
    """Exact-match accuracy over a dataset with ``prompt``/``answer`` (and ``task``) columns.

    Raw ``Q : ... A :`` rows are scored on the answer tokens only; instruction-format rows also need ``</s>``
    after the answer (the model must stop). Returns a float, or ``{task: accuracy}`` with ``by_task=True``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts, answers = _columns(dataset)
    if not prompts:
        raise ValueError("dataset is empty")
    correct = row_correct(model, tokenizer, prompts, answers, batch_size)
    if not by_task:
        return correct.float().mean().item()
    tasks = list(dataset["task"])
    result = {}
    for task in dict.fromkeys(tasks):  # first-appearance order
        idx = torch.tensor([i for i, t in enumerate(tasks) if t == task])
        result[task] = correct[idx].float().mean().item()
    return result


def knowledge_accuracy(model, tokenizer, world: World, countries: str = "heldout", fmt: str = "qa") -> float:
    """Closed-book QA accuracy over every fact of the chosen countries ("heldout", "qa" or "all")."""
    return answer_accuracy(model, tokenizer, knowledge_eval(world, countries, fmt))


def task_accuracy(model, tokenizer, world: World, n_per_task: int = 100):
    """Downstream-task accuracy (instruction format): ``(mean over tasks, {task: accuracy})``."""
    per_task = answer_accuracy(model, tokenizer, task_eval(world, n_per_task), by_task=True)
    return sum(per_task[t] for t in TASKS) / len(TASKS), per_task
