"""Exact-match evaluation by one teacher-forced forward pass, and the batch encoder SFT reuses.

A row counts as correct iff the model's argmax equals the answer token at *every* answer position (and at the
``</s>`` after it for instruction-format rows). With the true answer fed in (teacher forcing) this is exactly
"greedy decoding reproduces the answer": greedy decoding stays on the answer as long as every argmax is right, and
the first wrong argmax makes both checks fail. One forward pass for a whole batch is much faster than decoding.
For the one-token answers of the knowledge questions it is next-token exact match, the closed-book QA metric.
"""
import torch

from .world import TASKS, World, is_instruction, knowledge_eval, task_eval

IGNORE_INDEX = -100  # label value that PyTorch's cross-entropy (and Hugging Face's loss) skips


def encode_examples(tokenizer, prompts, answers, add_eos=True) -> dict:
    """Tokenize ``prompt + " " + answer (+ </s>)`` for a batch, right-padded, as torch tensors.

    Returns ``input_ids`` (B, T), ``attention_mask`` (B, T) and ``labels`` (B, T): the answer tokens (and eos)
    keep their ids, every prompt and padding position is -100 -- so the loss of a causal LM trained on these
    batches is the answer-only SFT loss. ``add_eos`` is one bool for all rows or one bool per row.
    """
    prompts, answers = list(prompts), list(answers)
    if len(prompts) != len(answers):
        raise ValueError(f"prompts and answers must have the same length, got {len(prompts)} and {len(answers)}")
    eos = [bool(add_eos)] * len(prompts) if isinstance(add_eos, (bool, int)) else [bool(e) for e in add_eos]
    if len(eos) != len(prompts):
        raise ValueError(f"add_eos must be a bool or one bool per row, got {len(eos)} values for {len(prompts)} rows")
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]      # <s> prompt
    answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]     # answer
    seqs, labels = [], []
    for p, a, e in zip(prompt_ids, answer_ids, eos):
        a = a + [tokenizer.eos_token_id] if e else a
        seqs.append(p + a)
        labels.append([IGNORE_INDEX] * len(p) + a)
    T = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), T), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), T), dtype=torch.long)
    label_ids = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labels)):
        input_ids[i, :len(s)] = torch.tensor(s)
        attention_mask[i, :len(s)] = 1
        label_ids[i, :len(lab)] = torch.tensor(lab)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}


def _columns(dataset):
    try:
        return list(dataset["prompt"]), list(dataset["answer"])
    except (KeyError, TypeError) as err:
        raise ValueError("dataset must have 'prompt' and 'answer' columns (see minimal_loramoe.world)") from err


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
            logits = model(input_ids=ids, attention_mask=mask).logits         # (B, T, V)
            pred = logits[:, :-1].argmax(-1)                                   # (B, T-1): prediction for t+1
            target = batch["labels"][:, 1:].to(device)                         # (B, T-1)
            scored = target != IGNORE_INDEX
            out.append(((pred == target) | ~scored).all(dim=1).cpu())
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
