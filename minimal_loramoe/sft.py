"""Answer-only supervised fine-tuning data and loss, for any causal LM (nothing here knows the tiny world).

* :func:`encode_examples` -- ``prompt + answer (+ eos)`` batches, right-padded, labels -100 except on the answer;
* :func:`answer_loss` -- the mean cross-entropy over the answer tokens of such a batch (= ``model(**batch).loss``
  of a Hugging Face causal LM), with the vocabulary projection at the answer positions only (:func:`answer_logits`).
"""
import weakref
from itertools import chain

import numpy as np
import torch

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
