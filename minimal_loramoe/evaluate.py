"""Exact-match evaluation by one teacher-forced forward pass, and the batch encoder SFT reuses.

A row counts as correct iff the model's argmax equals the answer token at *every* answer position (and at the
``</s>`` after it for instruction-format rows). With the true answer fed in (teacher forcing) this is exactly
"greedy decoding reproduces the answer": greedy decoding stays on the answer as long as every argmax is right, and
the first wrong argmax makes both checks fail. One forward pass for a whole batch is much faster than decoding.
For the one-token answers of the knowledge questions it is next-token exact match, the closed-book QA metric.
"""
import weakref
from itertools import chain

import numpy as np
import torch

from .world import TASKS, World, is_instruction, knowledge_eval, task_eval

IGNORE_INDEX = -100  # label value that PyTorch's cross-entropy (and Hugging Face's loss) skips
_MAX_CACHED = 200_000  # texts remembered per tokenizer
_token_cache = weakref.WeakKeyDictionary()  # tokenizer -> {(text, add_special_tokens): ids}


def _token_ids(tokenizer, texts, add_special_tokens: bool) -> list:
    """Token ids of each text, memoised per tokenizer: evaluation and SFT tokenize the same few thousand prompts
    hundreds of times, and calling the tokenizer costs more than the tiny model's forward pass."""
    try:
        cache = _token_cache.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no memo
        return tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    if len(cache) > _MAX_CACHED:
        cache.clear()
    missing = [t for t in dict.fromkeys(texts) if (t, add_special_tokens) not in cache]
    if missing:
        for t, ids in zip(missing, tokenizer(missing, add_special_tokens=add_special_tokens)["input_ids"]):
            cache[(t, add_special_tokens)] = ids
    return [cache[(t, add_special_tokens)] for t in texts]


def encode_examples(tokenizer, prompts, answers, add_eos=True, prompt_special_tokens: bool = True,
                    eos_id: int | None = None) -> dict:
    """Tokenize ``prompt + " " + answer (+ </s>)`` for a batch, right-padded, as torch tensors.

    Returns ``input_ids`` (B, T), ``attention_mask`` (B, T) and ``labels`` (B, T): the answer tokens (and eos)
    keep their ids, every prompt and padding position is -100 -- so the loss of a causal LM trained on these
    batches is the answer-only SFT loss. ``add_eos`` is one bool for all rows or one bool per row.
    ``prompt_special_tokens=False`` for prompts that already hold them (text rendered by a chat template);
    ``eos_id`` is the token that ends an answer (default ``tokenizer.eos_token_id``).
    """
    prompts, answers = list(prompts), list(answers)
    if len(prompts) != len(answers):
        raise ValueError(f"prompts and answers must have the same length, got {len(prompts)} and {len(answers)}")
    eos = [bool(add_eos)] * len(prompts) if isinstance(add_eos, (bool, int)) else [bool(e) for e in add_eos]
    if len(eos) != len(prompts):
        raise ValueError(f"add_eos must be a bool or one bool per row, got {len(eos)} values for {len(prompts)} rows")
    prompt_ids = _token_ids(tokenizer, prompts, add_special_tokens=prompt_special_tokens)  # <s> prompt
    answer_ids = _token_ids(tokenizer, answers, add_special_tokens=False)                  # answer
    if eos_id is None:
        eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id  # (looked up once: slow properties)
    if pad_id is None:  # many base models have no pad token; any id will do, padding is masked and never scored
        pad_id = eos_id
    seqs, labels = [], []
    for p, a, e in zip(prompt_ids, answer_ids, eos):
        a = a + [eos_id] if e else a
        seqs.append(p + a)
        labels.append([IGNORE_INDEX] * len(p) + a)
    lengths = np.array([len(s) for s in seqs])
    real = np.arange(lengths.max()) < lengths[:, None]  # (B, T) right padding: tokens keep positions 0, 1, ...
    input_ids = np.full(real.shape, pad_id, dtype=np.int64)
    input_ids[real] = list(chain.from_iterable(seqs))   # row-major fill = each row's tokens, left-aligned
    label_ids = np.full(real.shape, IGNORE_INDEX, dtype=np.int64)
    label_ids[real] = list(chain.from_iterable(labels))
    input_ids, attention_mask, label_ids = (torch.from_numpy(x) for x in (input_ids, real.astype(np.int64),
                                                                          label_ids))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}


def _columns(dataset):
    try:
        return list(dataset["prompt"]), list(dataset["answer"])
    except (KeyError, TypeError) as err:
        raise ValueError("dataset must have 'prompt' and 'answer' columns (see minimal_loramoe.world)") from err


# Config fields of Hugging Face models whose logits are more than ``lm_head(hidden)`` (Gemma 2's soft-capping,
# Cohere's and Granite's scaling): for those the shortcut in ``answer_logits`` would be wrong.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _plain_head(model) -> bool:
    config = getattr(model, "config", None)
    return all(getattr(config, name, None) in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS)


def answer_logits(model, ids, mask, rows, cols) -> torch.Tensor:
    """Logits (N, V) at positions (rows, cols) only. For a ``*ForCausalLM`` with ``.model`` and ``.lm_head`` the
    vocabulary projection runs at those positions alone: the answer-only loss and the exact-match check need
    nothing else, and on the tiny model the projection over every position costs a quarter of the compute."""
    body, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if isinstance(body, torch.nn.Module) and isinstance(head, torch.nn.Module) and _plain_head(model):
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state   # (B, T, H)
        return head(hidden[rows, cols])                                        # (N, V)
    return model(input_ids=ids, attention_mask=mask).logits[rows, cols]


def answer_loss(model, batch) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of an ``encode_examples`` batch (label -100 = not scored).

    The same number as ``model(**batch).loss`` of a Hugging Face causal LM (logits at t predict token t+1,
    averaged over the scored tokens), computed with the vocabulary projection at the scored positions only.
    """
    target = batch["labels"][:, 1:]                                            # (B, T-1): token t+1
    rows, cols = (target != IGNORE_INDEX).nonzero(as_tuple=True)               # the answer positions
    logits = answer_logits(model, batch["input_ids"], batch["attention_mask"], rows, cols)  # (N, V)
    return torch.nn.functional.cross_entropy(logits.float(), target[rows, cols])


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
