import numpy as np
import pytest

from minimal_loramoe.lab.world import (ATTRIBUTES, KNOWLEDGE, TASKS, WorldConfig, instruction_prompt, is_instruction,
                                   knowledge_eval, make_world, pretraining_batch, sft_dataset, task_eval)


@pytest.fixture(scope="module")
def world():
    return make_world()


def test_deterministic_for_a_seed_and_different_for_another(world):
    again = make_world(WorldConfig(seed=0))
    assert again == world and again.facts == world.facts and again.heldout_countries == world.heldout_countries
    other = make_world(WorldConfig(seed=1))
    assert other.facts != world.facts


def test_facts_never_contradict(world):
    cfg = world.config
    assert len(world.countries) == len(set(world.countries)) == cfg.num_countries
    assert set(world.facts) == {(c, a) for c in world.countries for a in ATTRIBUTES}  # one value per pair
    for (c, a), v in world.facts.items():
        assert v in world.attributes[a]
    capitals = [world.facts[(c, "capital")] for c in world.countries]
    assert len(set(capitals)) == len(capitals)  # every capital belongs to one country only
    assert not set(world.countries) & set(world.attributes["capital"])  # a country is never also a city
    assert sorted(world.qa_countries + world.heldout_countries) == sorted(world.countries)
    assert not set(world.qa_countries) & set(world.heldout_countries)
    assert len(world.qa_countries) == round(cfg.qa_fraction * cfg.num_countries)


def test_heldout_countries_never_in_qa_text(world):
    heldout = set(world.heldout_countries)
    docs = pretraining_batch(world, 3000, np.random.default_rng(0))
    qa_docs = [d for d in docs if d.startswith("Q :")]
    bios = [d for d in docs if not d.startswith("Q :")]
    assert qa_docs and bios
    assert not any(w in heldout for d in qa_docs for w in d.split())
    assert any(w in heldout for d in bios for w in d.split())  # ... but bios do mention them
    skill = sum(1 for d in docs if " plus " in d or "uppercase" in d or " after " in d or "doubled" in d
                or "twice" in d)
    assert 0.1 < skill / len(docs) < 0.3  # skill_fraction = 0.2 (bios never use these words)
    sft = sft_dataset(world, 2000, knowledge_fraction=0.5)
    knowledge = [p for p, t in zip(sft["prompt"], sft["task"]) if t == KNOWLEDGE]
    assert knowledge and not any(w in heldout for p in knowledge for w in p.split())


def test_sft_dataset_columns_types_and_prefix(world):
    ds = sft_dataset(world, 500, knowledge_fraction=0.2, seed=3)
    assert ds.column_names == ["prompt", "answer", "task", "type"]
    assert all((t == KNOWLEDGE) == (y == 1) for t, y in zip(ds["task"], ds["type"]))
    assert set(ds["task"]) == {KNOWLEDGE, *TASKS}
    assert all(is_instruction(p) for p in ds["prompt"])
    assert 0.1 < np.mean(ds["type"]) < 0.3
    assert sft_dataset(world, 500, seed=3)["prompt"] == ds["prompt"]
    assert sft_dataset(world, 200, seed=3)["prompt"] == ds["prompt"][:200]  # prefix property
    assert sft_dataset(world, 500, seed=4)["prompt"] != ds["prompt"]
    assert sum(sft_dataset(world, 300, knowledge_fraction=0.0)["type"]) == 0


def test_task_answers_are_right(world):
    ds = task_eval(world, n_per_task=50)
    assert len(ds) == 50 * len(TASKS) and set(ds["type"]) == {0}
    for p, a, t in zip(ds["prompt"], ds["answer"], ds["task"]):
        q = p.split()
        if t == "add":
            x, y = int(q[5]), int(q[7])
            assert a == str(x + y)
        elif t == "next_letter":
            assert ord(a) == ord(q[8]) + 1
        elif t == "upper":
            letters = p.split(" What is ")[1].split(" in uppercase")[0]
            assert a == letters.upper() and 1 <= len(letters.split()) <= 3
        elif t == "double":
            assert a == f"{q[5]} {q[5]}"


def test_knowledge_eval_formats(world):
    qa = knowledge_eval(world, "heldout", "qa")
    assert len(qa) == len(world.heldout_countries) * len(ATTRIBUTES)
    assert all(p.startswith("Q : ") and p.endswith(" A :") for p in qa["prompt"])
    assert qa[0]["answer"] == world.facts[(world.heldout_countries[0], ATTRIBUTES[0])]
    ins = knowledge_eval(world, "qa", "instruction")
    assert len(ins) == len(world.qa_countries) * len(ATTRIBUTES) and set(ins["type"]) == {1}
    assert ins[0]["prompt"] == instruction_prompt(f"What is the capital of {world.qa_countries[0]} ?")
    assert len(knowledge_eval(world, "all")) == len(world.facts)


def test_bad_arguments_raise(world):
    with pytest.raises(ValueError, match="countries"):
        knowledge_eval(world, "nowhere")
    with pytest.raises(ValueError, match="fmt"):
        knowledge_eval(world, "qa", "chat")
    with pytest.raises(ValueError, match="knowledge_fraction"):
        sft_dataset(world, 10, knowledge_fraction=1.5)
    with pytest.raises(ValueError, match="qa_fraction"):
        make_world(WorldConfig(qa_fraction=2.0))
    with pytest.raises(ValueError, match="num_cities"):
        make_world(WorldConfig(num_cities=10))
