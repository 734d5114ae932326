import numpy as np

from minimal_loramoe.lab.tokenizer import build_tokenizer
from minimal_loramoe.lab.world import knowledge_eval, make_world, pretraining_batch, sft_dataset, task_eval, vocabulary


def test_special_tokens_and_deterministic_vocabulary():
    world = make_world()
    tok = build_tokenizer(world)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 4 + len(vocabulary(world))
    assert build_tokenizer(make_world()).get_vocab() == tok.get_vocab()


def test_round_trip_without_unk_on_every_generated_text():
    world = make_world()
    tok = build_tokenizer(world)
    sft = sft_dataset(world, 500, knowledge_fraction=0.5)
    texts = pretraining_batch(world, 500, np.random.default_rng(1))
    texts += [p + " " + a for p, a in zip(sft["prompt"], sft["answer"])]
    for ds in (knowledge_eval(world, "all", "qa"), knowledge_eval(world, "all", "instruction"), task_eval(world)):
        texts += [p + " " + a for p, a in zip(ds["prompt"], ds["answer"])]
    enc = tok(texts)["input_ids"]
    assert all(ids[0] == tok.bos_token_id for ids in enc)
    assert not any(tok.unk_token_id in ids for ids in enc)
    assert [tok.decode(ids, skip_special_tokens=True) for ids in enc] == texts
    assert all(len(ids) == len(t.split()) + 1 for ids, t in zip(enc, texts))  # one word = one token
