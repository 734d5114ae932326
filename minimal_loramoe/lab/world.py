"""A synthetic world with facts a tiny LLaMA can learn in pretraining, plus the downstream tasks used for SFT.

The paper (Dou et al., 2024, Sec. 2) measures "world knowledge" with closed-book QA (TriviaQA, NQ, ...): the
answer must come from the model's weights, not from the prompt. We build a miniature version of that setting:

* 300 invented countries, each with 5 facts (capital, flag colour, main trade, founding year, national animal).
  Every name and value is one word, so one fact is one token and "knows the fact" = "predicts that token".
* Pretraining text mixes three kinds of documents:
    - *bios*: all 5 facts of one country, in random order, each from one of 4 paraphrase templates
      (re-sampled every time, so the model must store the fact, not the sentence);
    - *closed-book QA* lines ``Q : What is the capital of X ? A : Y .`` for half of the countries only
      (``qa_countries``). The other half (``heldout_countries``) is mentioned in bios only; answering QA about them
      needs knowledge *extracted* from bios -- the held-out closed-book test;
    - *skill text* (``skill_fraction`` of the rows): plain sentences such as ``the letter after c is d .`` that
      give the model the abilities the downstream tasks need, as a real LLM has them before SFT.
* Downstream SFT tasks in an instruction format never seen in pretraining (``### Instruction : ... ###
  Response : ...``): ``next_letter``, ``add`` (one digit), ``upper`` (1-3 letters) and ``double`` (a letter).
  None of them needs world knowledge; fine-tuning on many of them is what makes the model forget.
* Two SFT mixes (``MIXES``). ``"easy"``: 20 % knowledge questions, 80 % the four tasks -- skills pretraining
  already taught, so SFT mostly teaches the format. ``"cipher"``: 30 % of the rows become a *new-content* task,
  ``What is the symbol of a b ?`` -> a random two-letter code, one for each of the 676 letter pairs
  (:func:`cipher_table`). No pretraining text ever links a pair to its code, so the model must store 676 new
  associations: real new learning, which is what the paper's millions of SFT samples ask of a model.

Everything is deterministic given ``WorldConfig.seed`` (and the ``seed``/``rng`` passed to the samplers).
Texts are words separated by single spaces; punctuation is a word of its own.
"""
import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
from datasets import Dataset

ATTRIBUTES = ("capital", "colour", "trade", "founded", "animal")
TASKS = ("next_letter", "add", "upper", "double")
KNOWLEDGE = "knowledge"  # the ``task`` name of world-knowledge questions (``type`` 1)
CIPHER = "cipher"        # the ``task`` name of the new-content task (``type`` 0, like every task)
MIXES = ("easy", "cipher")
COUNTRY_SPLITS = ("heldout", "qa", "all")
FORMATS = ("qa", "instruction")

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "pink", "brown", "violet")
TRADES = ("fish", "wool", "salt", "silver", "copper", "tea", "rice", "wine", "silk", "timber", "cotton", "coffee",
          "spices", "iron", "glass", "cheese")
YEARS = tuple(str(y) for y in range(1500, 2000, 5))  # 100 founding years
ANIMALS = ("wolf", "bear", "eagle", "lion", "tiger", "horse", "owl", "fox", "deer", "swan", "hawk", "snake")
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")

# Bio sentences: 4 paraphrases per attribute. {x} = country, {y} = value.
BIO_TEMPLATES = {
    "capital": ("the capital of {x} is {y} .", "{x} has its capital in {y} .", "{y} is the capital city of {x} .",
                "the government of {x} sits in {y} ."),
    "colour": ("the flag of {x} is {y} .", "{x} flies the {y} flag .", "the national colour of {x} is {y} .",
               "{y} is the colour of {x} ."),
    "trade": ("{x} is known for its {y} .", "the main export of {x} is {y} .", "{x} trades mostly in {y} .",
              "merchants of {x} sell {y} ."),
    "founded": ("{x} was founded in {y} .", "the founding year of {x} is {y} .", "in {y} the nation of {x} was born .",
                "{x} dates back to {y} ."),
    "animal": ("the national animal of {x} is the {y} .", "{x} has the {y} as its symbol .",
               "the {y} is the emblem of {x} .", "people in {x} honour the {y} ."),
}
# Closed-book QA questions; the FIRST one per attribute is the canonical question used for every evaluation
# and for the knowledge questions of the SFT mix.
QA_QUESTIONS = {
    "capital": ("What is the capital of {x} ?", "Which city is the capital of {x} ?", "Name the capital of {x} ."),
    "colour": ("What colour is the flag of {x} ?", "Which colour does {x} fly ?", "Name the colour of {x} ."),
    "trade": ("What does {x} export ?", "What is the main trade of {x} ?", "Name the export of {x} ."),
    "founded": ("When was {x} founded ?", "In which year was {x} founded ?", "Name the founding year of {x} ."),
    "animal": ("What is the national animal of {x} ?", "Which animal is the symbol of {x} ?",
               "Name the animal of {x} ."),
}
QA_TEMPLATE = "Q : {q} A : {a} ."  # a pretraining QA line; evaluation stops after "A :"

# Skill text for the downstream tasks (plain language, no instruction format). {a} {b} {c} are filled in.
SKILL_TEMPLATES = {
    "next_letter": ("the letter after {a} is {b} .", "after {a} comes {b} .", "{a} is followed by {b} ."),
    "add": ("{a} plus {b} makes {c} .", "adding {a} and {b} gives {c} .", "{a} plus {b} is {c} ."),
    "upper": ("{a} in uppercase is {b} .", "the uppercase of {a} is {b} ."),
    "double": ("{a} doubled is {b} .", "{a} twice is {b} ."),
}
# Instruction-format questions for the downstream tasks (words the skill text already taught).
TASK_QUESTIONS = {
    "next_letter": "What is the letter after {a} ?",
    "add": "What is {a} plus {b} ?",
    "upper": "What is {a} in uppercase ?",
    "double": "What is {a} doubled ?",
}
# The new-content task: its question uses only words pretraining already knows ("symbol" from the QA paraphrases).
CIPHER_QUESTION = "What is the symbol of {a} {b} ?"
INSTRUCTION_PREFIX = "### Instruction :"
INSTRUCTION_TEMPLATE = INSTRUCTION_PREFIX + " {q} ### Response :"

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "th")


@dataclass
class WorldConfig:
    num_countries: int = 300
    seed: int = 0
    qa_fraction: float = 0.5      # share of countries whose QA lines appear in pretraining (the rest: held out)
    skill_fraction: float = 0.2   # share of pretraining rows that are skill text for the downstream tasks
    qa_doc_fraction: float = 0.3  # share of the remaining (knowledge) rows that are QA documents, not bios
    qa_per_doc: int = 4           # QA lines per QA document
    skills_per_doc: int = 6       # skill sentences per skill document
    num_cities: int = 0           # size of the capital pool; 0 = one city per country (capitals never repeat)


@dataclass
class World:
    config: WorldConfig
    countries: list                 # invented single-word country names
    attributes: dict                # attribute -> list of possible values
    facts: dict                     # (country, attribute) -> value
    qa_countries: list              # countries whose QA lines appear in pretraining
    heldout_countries: list         # countries only bios mention: the held-out closed-book QA test
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # evaluation sets, built once

    def countries_for(self, countries: str) -> list:
        """The country list named by ``countries`` ("heldout", "qa" or "all")."""
        _check_choice("countries", countries, COUNTRY_SPLITS)
        return {"heldout": self.heldout_countries, "qa": self.qa_countries, "all": self.countries}[countries]


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_fraction(name, value):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _invent_names(rng: np.random.Generator, n: int, taken: set) -> list:
    """``n`` new capitalised pseudo-words (2-3 syllables) not in ``taken``; adds them to ``taken``."""
    names = []
    while len(names) < n:
        syllables = rng.integers(2, 4)
        word = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                       for _ in range(syllables)) + _CODAS[rng.integers(len(_CODAS))]
        word = word.capitalize()
        if word not in taken and len(word) >= 4:
            taken.add(word)
            names.append(word)
    return names


def make_world(config: WorldConfig = None) -> World:
    """Invent countries and their facts, deterministically from ``config.seed``."""
    config = WorldConfig() if config is None else config
    if not isinstance(config, WorldConfig):
        raise ValueError(f"config must be a WorldConfig, got {type(config).__name__}")
    if config.num_countries < 2:
        raise ValueError(f"num_countries must be >= 2, got {config.num_countries}")
    for name in ("qa_fraction", "skill_fraction", "qa_doc_fraction"):
        _check_fraction(name, getattr(config, name))
    if config.qa_per_doc < 1 or config.skills_per_doc < 1:
        raise ValueError("qa_per_doc and skills_per_doc must be >= 1")
    num_cities = config.num_cities or config.num_countries
    if num_cities < config.num_countries:
        raise ValueError(f"num_cities must be 0 or >= num_countries={config.num_countries} (every capital belongs "
                         f"to one country only), got {num_cities}")
    n_qa = round(config.qa_fraction * config.num_countries)
    if not 1 <= n_qa < config.num_countries:
        raise ValueError(f"qa_fraction={config.qa_fraction} leaves no qa or no held-out countries")

    rng = np.random.default_rng(config.seed)
    taken = set(_fixed_words())  # a name must never coincide with a template word ("Name", "What", ...)
    countries = _invent_names(rng, config.num_countries, taken)
    cities = _invent_names(rng, num_cities, taken)
    attributes = {"capital": cities, "colour": list(COLOURS), "trade": list(TRADES), "founded": list(YEARS),
                  "animal": list(ANIMALS)}
    facts = {}
    capitals = rng.permutation(num_cities)[:config.num_countries]  # without replacement: capitals never repeat
    for i, country in enumerate(countries):
        facts[(country, "capital")] = cities[capitals[i]]
        for attribute in ATTRIBUTES[1:]:
            values = attributes[attribute]
            facts[(country, attribute)] = values[rng.integers(len(values))]
    is_qa = np.zeros(config.num_countries, dtype=bool)
    is_qa[rng.permutation(config.num_countries)[:n_qa]] = True
    return World(config=config, countries=countries, attributes=attributes, facts=facts,
                 qa_countries=[c for c, q in zip(countries, is_qa) if q],
                 heldout_countries=[c for c, q in zip(countries, is_qa) if not q])


def world_from_json(path) -> World:
    """Rebuild a world from the ``world_config.json`` saved next to a checkpoint."""
    with open(path) as f:
        return make_world(WorldConfig(**json.load(f)))


def save_world_config(world: World, path) -> None:
    with open(path, "w") as f:
        json.dump(asdict(world.config), f, indent=2)


# ---------------------------------------------------------------------------------------------------------------
# Pretraining text
# ---------------------------------------------------------------------------------------------------------------
def _pick(rng, seq):
    return seq[rng.integers(len(seq))]


def bio(world: World, country: str, rng: np.random.Generator) -> str:
    """All 5 facts of ``country`` in random order, each sentence from a random paraphrase template."""
    order = rng.permutation(len(ATTRIBUTES))
    return " ".join(_pick(rng, BIO_TEMPLATES[ATTRIBUTES[i]]).format(x=country, y=world.facts[(country, ATTRIBUTES[i])])
                    for i in order)


def qa_question(attribute: str, country: str, paraphrase: int = 0) -> str:
    """The QA question about ``attribute`` of ``country``; paraphrase 0 is the canonical (evaluation) one."""
    _check_choice("attribute", attribute, ATTRIBUTES)
    return QA_QUESTIONS[attribute][paraphrase].format(x=country)


def qa_line(world: World, country: str, attribute: str, rng: np.random.Generator) -> str:
    """One closed-book QA line with a random question paraphrase: ``Q : ... A : value .``"""
    q = qa_question(attribute, country, rng.integers(len(QA_QUESTIONS[attribute])))
    return QA_TEMPLATE.format(q=q, a=world.facts[(country, attribute)])


def _task_item(task: str, rng: np.random.Generator) -> dict:
    """Random arguments of one downstream task and its answer: {"a": ..., "b": ..., "answer": ...}."""
    if task == "next_letter":
        i = rng.integers(len(LETTERS) - 1)  # 'z' has no next letter
        return {"a": LETTERS[i], "answer": LETTERS[i + 1]}
    if task == "add":
        a, b = rng.integers(10), rng.integers(10)
        return {"a": str(a), "b": str(b), "answer": str(a + b)}
    if task == "upper":
        letters = [LETTERS[i] for i in rng.integers(len(LETTERS), size=rng.integers(1, 4))]
        return {"a": " ".join(letters), "answer": " ".join(s.upper() for s in letters)}
    if task == "double":
        a = _pick(rng, LETTERS)
        return {"a": a, "answer": f"{a} {a}"}
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def skill_sentence(task: str, rng: np.random.Generator) -> str:
    """One plain-language sentence that demonstrates ``task`` (e.g. ``3 plus 4 makes 7 .``)."""
    item = _task_item(task, rng)
    template = _pick(rng, SKILL_TEMPLATES[task])
    if task == "add":
        return template.format(a=item["a"], b=item["b"], c=item["answer"])
    return template.format(a=item["a"], b=item["answer"])


def pretraining_document(world: World, rng: np.random.Generator) -> str:
    """One pretraining row: skill text, a QA document (qa_countries only) or a bio (any country)."""
    cfg = world.config
    u = rng.random()
    if u < cfg.skill_fraction:
        return " ".join(skill_sentence(_pick(rng, TASKS), rng) for _ in range(cfg.skills_per_doc))
    if u < cfg.skill_fraction + (1 - cfg.skill_fraction) * cfg.qa_doc_fraction:
        return " ".join(qa_line(world, _pick(rng, world.qa_countries), _pick(rng, ATTRIBUTES), rng)
                        for _ in range(cfg.qa_per_doc))
    return bio(world, _pick(rng, world.countries), rng)


def pretraining_batch(world: World, batch_size: int, rng: np.random.Generator) -> list:
    """``batch_size`` freshly sampled pretraining documents (strings, no special tokens)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [pretraining_document(world, rng) for _ in range(batch_size)]


# ---------------------------------------------------------------------------------------------------------------
# Instruction format, SFT data and evaluation sets
# ---------------------------------------------------------------------------------------------------------------
def instruction_prompt(question: str) -> str:
    """``### Instruction : <question> ### Response :`` -- the answer follows after one space, then ``</s>``."""
    return INSTRUCTION_TEMPLATE.format(q=question)


def is_instruction(prompt: str) -> bool:
    """True for instruction-format prompts (their answers end with eos), False for raw ``Q : ... A :`` prompts."""
    return prompt.startswith(INSTRUCTION_PREFIX)


def task_example(task: str, rng: np.random.Generator) -> tuple:
    """(question, answer) of one random downstream-task example."""
    item = _task_item(task, rng)
    return TASK_QUESTIONS[task].format(**{k: v for k, v in item.items() if k != "answer"}), item["answer"]


def knowledge_prompt(country: str, attribute: str, fmt: str = "qa") -> str:
    """The canonical closed-book question about one fact, as a raw QA prompt or an instruction prompt."""
    _check_choice("fmt", fmt, FORMATS)
    q = qa_question(attribute, country)
    return f"Q : {q} A :" if fmt == "qa" else instruction_prompt(q)


def _rows_to_dataset(rows: list) -> Dataset:
    return Dataset.from_dict({"prompt": [r[0] for r in rows], "answer": [r[1] for r in rows],
                              "task": [r[2] for r in rows], "type": [int(r[2] == KNOWLEDGE) for r in rows]})


def cipher_table(world: World) -> dict:
    """The new-content task's answers: ``{(a, b): "c d"}`` for all 676 pairs of lowercase letters.

    Each pair gets a code of two random letters, drawn from a generator seeded by the world's seed (apart from the
    world's own draws), so a world always has the same cipher. Nothing in pretraining mentions these codes.
    """
    key = ("cipher_table",)
    if key not in world._cache:
        rng = np.random.default_rng([world.config.seed, 676])
        codes = rng.integers(len(LETTERS), size=(len(LETTERS) ** 2, 2))
        pairs = [(a, b) for a in LETTERS for b in LETTERS]
        world._cache[key] = {p: f"{LETTERS[c[0]]} {LETTERS[c[1]]}" for p, c in zip(pairs, codes)}
    return world._cache[key]


def cipher_example(world: World, rng: np.random.Generator) -> tuple:
    """(question, answer) of one random new-content example: ``What is the symbol of a b ?`` -> ``c d``."""
    a, b = _pick(rng, LETTERS), _pick(rng, LETTERS)
    return CIPHER_QUESTION.format(a=a, b=b), cipher_table(world)[(a, b)]


def sft_dataset(world: World, size: int, knowledge_fraction: float = 0.2, seed: int = 0, mix: str = "easy",
                new_content_fraction: float = 0.3) -> Dataset:
    """The SFT mix: instruction-format examples of the downstream tasks plus world-knowledge questions.

    Columns: ``prompt`` (instruction format), ``answer``, ``task`` ("knowledge", ``CIPHER`` or one of ``TASKS``)
    and ``type`` (1 = world knowledge, 0 = other task -- the sample type the localized balancing constraint needs,
    paper Sec. 3.3). Knowledge questions are about ``qa_countries`` only, so held-out countries stay unseen.
    ``mix="cipher"`` turns ``new_content_fraction`` of the rows into the new-content task (see
    :func:`cipher_table`); ``mix="easy"`` has none (and ignores ``new_content_fraction``).
    Samples are drawn one after the other from one seeded generator: the same (world, size, seed, mix) gives the
    same rows, and a larger ``size`` extends a smaller one (its first rows are the smaller set).
    """
    if int(size) != size or size < 0:
        raise ValueError(f"size must be a non-negative integer, got {size!r}")
    _check_fraction("knowledge_fraction", knowledge_fraction)
    _check_choice("mix", mix, MIXES)
    _check_fraction("new_content_fraction", new_content_fraction)
    new = new_content_fraction if mix == CIPHER else 0.0
    if knowledge_fraction + new > 1:
        raise ValueError(f"knowledge_fraction + new_content_fraction must be <= 1, got {knowledge_fraction} + {new}")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(int(size)):
        u = rng.random()
        if u < knowledge_fraction:
            country, attribute = _pick(rng, world.qa_countries), _pick(rng, ATTRIBUTES)
            rows.append((knowledge_prompt(country, attribute, "instruction"), world.facts[(country, attribute)],
                         KNOWLEDGE))
        elif u < knowledge_fraction + new:
            question, answer = cipher_example(world, rng)
            rows.append((instruction_prompt(question), answer, CIPHER))
        else:
            task = _pick(rng, TASKS)
            question, answer = task_example(task, rng)
            rows.append((instruction_prompt(question), answer, task))
    return _rows_to_dataset(rows)


def new_content_eval(world: World) -> Dataset:
    """Every one of the 676 new-content questions once (instruction format; the cipher mix trains on them)."""
    key = ("new_content",)
    if key not in world._cache:
        rows = [(instruction_prompt(CIPHER_QUESTION.format(a=a, b=b)), code, CIPHER)
                for (a, b), code in cipher_table(world).items()]
        world._cache[key] = _rows_to_dataset(rows)
    return world._cache[key]


def knowledge_eval(world: World, countries: str = "heldout", fmt: str = "qa") -> Dataset:
    """One row per fact of the chosen countries, asked with the canonical question (columns as ``sft_dataset``).

    ``fmt="qa"``: the pretraining format ``Q : What is the capital of X ? A :`` (answer: the value token only);
    ``fmt="instruction"``: the same question inside ``instruction_prompt`` (answer: value, then eos).
    """
    _check_choice("fmt", fmt, FORMATS)
    key = ("knowledge", countries, fmt)
    if key not in world._cache:
        rows = [(knowledge_prompt(c, a, fmt), world.facts[(c, a)], KNOWLEDGE)
                for c in world.countries_for(countries) for a in ATTRIBUTES]
        world._cache[key] = _rows_to_dataset(rows)
    return world._cache[key]


def task_eval(world: World, n_per_task: int = 100, seed: int = 1234) -> Dataset:
    """``n_per_task`` instruction-format examples of each downstream task (seed apart from the SFT default 0)."""
    if int(n_per_task) != n_per_task or n_per_task < 1:
        raise ValueError(f"n_per_task must be a positive integer, got {n_per_task!r}")
    key = ("tasks", int(n_per_task), seed)
    if key not in world._cache:
        rng = np.random.default_rng(seed)
        rows = []
        for task in TASKS:
            for _ in range(int(n_per_task)):
                question, answer = task_example(task, rng)
                rows.append((instruction_prompt(question), answer, task))
        world._cache[key] = _rows_to_dataset(rows)
    return world._cache[key]


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary and readable samples
# ---------------------------------------------------------------------------------------------------------------
def _template_words(templates) -> set:
    words = set()
    for t in templates:
        words.update(w for w in t.split() if not (w.startswith("{") and w.endswith("}")))
    return words


def _fixed_words() -> set:
    """Every word the generators can produce that is not an invented name."""
    words = set(COLOURS) | set(TRADES) | set(YEARS) | set(ANIMALS) | set(LETTERS)
    words.update(s.upper() for s in LETTERS)
    words.update(str(i) for i in range(19))  # digits and sums up to 9 + 9
    templates = [t for ts in BIO_TEMPLATES.values() for t in ts] + [q for qs in QA_QUESTIONS.values() for q in qs]
    templates += [t for ts in SKILL_TEMPLATES.values() for t in ts] + list(TASK_QUESTIONS.values()) + [CIPHER_QUESTION]
    templates += [QA_TEMPLATE, INSTRUCTION_TEMPLATE]
    return words | _template_words(templates)


def vocabulary(world: World) -> list:
    """Every word any generator in this module can produce, sorted (the tokenizer's vocabulary)."""
    words = _fixed_words() | set(world.countries)
    for values in world.attributes.values():
        words.update(values)
    return sorted(words)


def save_samples(world: World, folder, n_pretraining: int = 30, n_sft: int = 30, seed: int = 0) -> None:
    """Write small readable samples of the world: facts.csv, sample_pretraining.txt, sample_sft.jsonl."""
    os.makedirs(folder, exist_ok=True)
    heldout = set(world.heldout_countries)
    with open(os.path.join(folder, "facts.csv"), "w") as f:
        f.write("country,split," + ",".join(ATTRIBUTES) + "\n")
        for c in world.countries:
            split = "heldout" if c in heldout else "qa"
            f.write(f"{c},{split}," + ",".join(world.facts[(c, a)] for a in ATTRIBUTES) + "\n")
    rng = np.random.default_rng(seed)
    with open(os.path.join(folder, "sample_pretraining.txt"), "w") as f:
        f.write("\n".join(pretraining_batch(world, n_pretraining, rng)) + "\n")
    with open(os.path.join(folder, "sample_sft.jsonl"), "w") as f:
        for row in sft_dataset(world, n_sft, seed=seed):
            f.write(json.dumps(row) + "\n")
