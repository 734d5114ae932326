"""Training a user can trust (issue #23): nothing lost on an interrupt or a bad --out, non-finite numbers stopped,
any causal LM by its own module names, prompts checked against the model's positions, loads that are all or
nothing, and adapters in PEFT's layout.

Every model here is a tiny random one built from a config (2 layers, width 32) and saved to a temporary folder with
the tiny world's tokenizer; runs are 2-6 steps. The tests marked slow train (the architecture matrix) or start
Python processes (Ctrl-C).
"""
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from minimal_loramoe import (AdapterConfig, TARGET_MODULES, adapter_layers, add_lora, add_loramoe, load_adapter,
                             load_adapter_file, save_adapter, save_adapter_file, train)
from minimal_loramoe.checkpoint import CHECKPOINT_FILE, read_checkpoint
from minimal_loramoe.finetune import FinetuneConfig, TrainingStopped, prepare_model, sft_loop
from minimal_loramoe.inject import find_targets
from minimal_loramoe.lab.model import DEFAULT_CHECKPOINT, load_pretrained
from minimal_loramoe.lab.world import sft_dataset

REPO = Path(__file__).resolve().parent.parent
FAST = ["--steps", "2", "--batch-size", "4", "--lr", "1e-2", "--warmup-steps", "0", "--cpu", "--no-progress"]


def tiny_configs(vocab: int, positions: int = 128) -> dict:
    """A config of every architecture the README lists as tested: 2 layers, width 32, FFN width 48."""
    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    glu = dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=positions, **ids)
    return {
        "llama": T.LlamaConfig(**glu),
        "qwen2": T.Qwen2Config(**glu),
        "mistral": T.MistralConfig(**glu),
        "gemma": T.GemmaConfig(**glu, head_dim=8),
        "gemma2": T.Gemma2Config(**glu, head_dim=8),
        "gemma3": T.Gemma3TextConfig(**glu, head_dim=8),
        "phi3": T.Phi3Config(**{**glu, "num_key_value_heads": 4}),
        "gpt_neox": T.GPTNeoXConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=positions, **ids),
        "opt": T.OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=positions, word_embed_proj_dim=32, **ids),
        "gpt2": T.GPT2Config(vocab_size=vocab, n_embd=32, n_inner=48, n_layer=2, n_head=4, n_positions=positions,
                             **ids),
    }


ARCHS = list(tiny_configs(8))
FFN_NAMES = {"llama": ["gate_proj", "up_proj", "down_proj"], "phi3": ["gate_up_proj", "down_proj"],
             "gpt_neox": ["dense_h_to_4h", "dense_4h_to_h"], "opt": ["fc1", "fc2"], "gpt2": ["mlp.c_fc", "mlp.c_proj"]}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def make_model(tmp_path_factory, tokenizer):
    """``make_model(arch, positions=128) -> folder`` of a tiny random model of ``arch`` with the tiny tokenizer."""
    made = {}

    def make(arch, positions=128):
        if (arch, positions) not in made:
            folder = tmp_path_factory.mktemp(f"{arch}-{positions}")
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(tiny_configs(len(tokenizer), positions)[arch]).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            made[arch, positions] = folder
        return made[arch, positions]

    return make


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory, world_sft_file):
    """32 typed samples of the tiny world as jsonl."""
    return world_sft_file(tmp_path_factory, 32)


def run(model, data, out, *extra):
    return train.main(["--model", str(model), "--data", str(data), "--out", str(out), *FAST, *extra])


def logits_of(model, tokenizer, text="### Instruction : What is i in uppercase ? ### Response :"):
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


# ------------------------------------------------------------------------------ 1. nothing lost: --out


def test_out_that_is_a_file_or_under_a_file_is_refused_before_loading(sft_file, tmp_path):
    (tmp_path / "file").write_text("mine")
    for out, message in [(tmp_path / "file", "is a file; --out must be a folder"),
                         (tmp_path / "file" / "run", "is a file, not a folder")]:
        with pytest.raises(ValueError, match=message):
            run(DEFAULT_CHECKPOINT, sft_file, out)
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused_before_loading(sft_file, tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(ValueError, match="cannot write in"):
            run(DEFAULT_CHECKPOINT, sft_file, tmp_path / "ro" / "run")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_out_equal_to_model_is_refused_and_the_model_kept(make_model, sft_file):
    model_dir = make_model("llama")
    before = (model_dir / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="is the --model folder"):
        run(model_dir, sft_file, model_dir, "--method", "full_ft", "--overwrite")
    assert (model_dir / "model.safetensors").read_bytes() == before


def test_non_empty_out_needs_overwrite(sft_file, tmp_path, make_model):
    model_dir = make_model("llama")
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"is not empty \(it holds \['notes.txt'\]\); pass --overwrite"):
        run(model_dir, sft_file, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    run(model_dir, sft_file, out, "--overwrite")
    assert (out / "adapter_model.safetensors").is_file() and (out / "notes.txt").read_text() == "mine"


def test_full_ft_overwrite_leaves_no_stale_shards(make_model, sft_file, tmp_path):
    """A previous sharded model in --out: its shards and index go, the new model loads."""
    out = tmp_path / "full"
    out.mkdir()
    save_file({"x": torch.zeros(1)}, out / "model-00001-of-00002.safetensors")
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00001-of-00002"}}))
    run(make_model("llama"), sft_file, out, "--method", "full_ft", "--overwrite")
    assert not (out / "model.safetensors.index.json").exists()
    assert not (out / "model-00001-of-00002.safetensors").exists()
    model, _ = train.load_trained(out)
    assert not any(n.startswith(".saving") for n in os.listdir(out))
    assert model.config.model_type == "llama"


# ------------------------------------------------------------------- 1. nothing lost: checkpoints, resume


@pytest.mark.parametrize("method, extra", [("loramoe", ["--dropout", "0.1"]), ("slim", []), ("full_ft", [])])
def test_stop_and_resume_equals_the_uninterrupted_run(method, extra, sft_file, tmp_path):
    """6 steps in one go, against 3 steps, a stop (as on Ctrl-C) and --resume: the same weights, bit for bit, and
    the same loss history. Dropout (random masks) and SLIM's clusters (buffers) must come back exactly too."""
    common = ["--method", method, "--steps", "6", "--save-every", "2", *extra]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    run(DEFAULT_CHECKPOINT, sft_file, full, *common)
    with pytest.raises(TrainingStopped, match=r"--stop-after 3: stopped after step 3 of 6; checkpoint written"):
        run(DEFAULT_CHECKPOINT, sft_file, stopped, *common, "--stop-after", "3")
    assert sorted(p.name for p in stopped.iterdir()) == [CHECKPOINT_FILE]  # nothing but the checkpoint
    assert read_checkpoint(stopped / CHECKPOINT_FILE)[1]["step"] == 3
    run(DEFAULT_CHECKPOINT, sft_file, stopped, *common, "--resume")
    assert not (stopped / CHECKPOINT_FILE).exists()  # done with
    weights = "model.safetensors" if method == "full_ft" else "adapter_model.safetensors"
    a, b = load_file(full / weights), load_file(stopped / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((full / "history.json").read_text()) == json.loads((stopped / "history.json").read_text())


def test_resume_refuses_other_settings_and_a_missing_checkpoint(sft_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="--resume: no checkpoint.safetensors"):
        run(DEFAULT_CHECKPOINT, sft_file, out, "--resume")
    with pytest.raises(TrainingStopped):
        run(DEFAULT_CHECKPOINT, sft_file, out, "--steps", "4", "--stop-after", "1")
    with pytest.raises(ValueError, match=r"other settings; \(checkpoint, this run\) differ in \{'lr': \(0.01, 0.02\)"):
        run(DEFAULT_CHECKPOINT, sft_file, out, "--steps", "4", "--resume", "--lr", "2e-2")


def test_a_non_empty_out_is_not_resumed_or_overwritten_by_accident(sft_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped):
        run(DEFAULT_CHECKPOINT, sft_file, out, "--steps", "4", "--stop-after", "1")
    with pytest.raises(ValueError, match="or --resume to continue the run whose checkpoint.safetensors it holds"):
        run(DEFAULT_CHECKPOINT, sft_file, out, "--steps", "4")


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_says_how_to_resume(sft_file, tmp_path):
    """SIGINT to a real process (100,000 steps, a checkpoint every step): it stops after its step, writes the
    checkpoint, and ends with one line and status 130."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "minimal_loramoe.train", "--model", str(DEFAULT_CHECKPOINT), "--data", str(sft_file),
           "--out", str(out), *FAST, "--steps", "100000", "--save-every", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / CHECKPOINT_FILE).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m minimal_loramoe.train: stopped: SIGINT received: stopped after step ")
    assert last.endswith("continue with the same command and --resume")
    assert read_checkpoint(out / CHECKPOINT_FILE)[1]["step"] >= 1
    assert not (out / "adapter_model.safetensors").exists()


# ------------------------------------------------------------------------------ 2. non-finite stopped


@pytest.mark.parametrize("extra, message", [
    (["--lr", "inf"], r"lr must be > 0 and finite, got inf"),
    (["--lr", "nan"], r"lr must be > 0 and finite, got nan"),
    (["--alpha", "nan"], r"lora_alpha \(alpha\) must be a number > 0 and finite, got nan"),
    (["--alpha", "inf"], r"lora_alpha \(alpha\) must be a number > 0 and finite"),
    (["--dropout", "nan"], r"lora_dropout \(dropout\) must be a number in \[0, 1\)"),
    (["--lbc-beta", "nan"], r"lbc_beta must be >= 0 and finite, got nan"),
    (["--lbc-beta", "-0.1"], r"lbc_beta must be >= 0 and finite, got -0.1"),
    (["--lbc-delta", "-1"], r"lbc_delta must be >= 0 and finite, got -1"),
    (["--weight-decay", "inf"], r"weight_decay must be >= 0 and finite"),
    (["--method", "slim", "--yield-scale", "inf"], r"yield_scale must be a number > 0 and finite"),
    (["--method", "slim", "--l1-weight", "nan"], r"l1_weight must be >= 0 and finite"),
    (["--rank", "0"], r"r \(rank\) must be an integer >= 1"),
    (["--save-every", "0"], r"--save-every must be >= 1"),
    (["--target-modules", "mlp"], r"matches modules that are not nn.Linear or Conv1D"),
])
def test_every_number_is_checked_before_anything_is_loaded(extra, message, sft_file, tmp_path):
    with pytest.raises(ValueError, match=message):
        run(DEFAULT_CHECKPOINT, sft_file, tmp_path / "out", *extra)
    assert not (tmp_path / "out").exists()


def test_a_nan_reaching_the_router_stops_the_run(make_model, sft_file, tmp_path, capsys):
    """NaN in a layer norm before the FFN: every router sees NaN inputs. The run stops at step 1, one line, no
    adapter written (before: exit 0, 'last loss nan', an all-NaN adapter)."""
    model = AutoModelForCausalLM.from_pretrained(make_model("llama"))
    with torch.no_grad():
        model.model.layers[0].post_attention_layernorm.weight[0] = float("nan")
    nan_dir = tmp_path / "nan_model"
    model.save_pretrained(nan_dir)
    AutoTokenizer.from_pretrained(DEFAULT_CHECKPOINT).save_pretrained(nan_dir)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        train.cli(["--model", str(nan_dir), "--data", str(sft_file), "--out", str(out), *FAST])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m minimal_loramoe.train: error: step 1 of 2: the loss is not finite")
    assert "stopped before the update; no checkpoint was written" in err
    assert not (out / "adapter_model.safetensors").exists()


def test_a_nan_later_in_the_run_keeps_the_last_good_checkpoint(tmp_path):
    """A NaN reaches the routers at step 3 (a hook): the loop stops before the update, names the step, and the
    checkpoint of step 2 is kept; the model still holds those finite weights."""
    base, tokenizer, world = load_pretrained()
    data = sft_dataset(world, 32, knowledge_fraction=0.3, seed=0)
    config = FinetuneConfig(method="loramoe", lr=1e-2, batch_size=4, steps=5, warmup_steps=0)
    model = prepare_model(base, config)
    calls = {"n": 0}
    router = next(iter(adapter_layers(model).values())).router

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    router.register_forward_hook(poison)
    path = tmp_path / CHECKPOINT_FILE
    with pytest.raises(TrainingStopped, match=r"step 3 of 5: the loss is not finite .*after step 2\) is kept") as info:
        sft_loop(model, tokenizer, data, config, checkpoint=path, save_every=1, progress=False)
    assert info.value.nonfinite and info.value.step == 2
    tensors, meta = read_checkpoint(path)
    assert meta["step"] == 2 and len(meta["history"]["loss"]) == 2
    layer = next(iter(adapter_layers(model).items()))
    assert torch.equal(tensors[f"model.{layer[0]}.lora_B"], layer[1].lora_B.detach())
    assert torch.isfinite(layer[1].lora_B).all()


def test_a_run_not_longer_than_its_warm_up_says_so(sft_file, tmp_path, capsys):
    run(DEFAULT_CHECKPOINT, sft_file, tmp_path / "a", "--warmup-steps", "20")
    assert "warning: the run's 2 steps do not exceed its 20 warm-up steps" in capsys.readouterr().err
    run(DEFAULT_CHECKPOINT, sft_file, tmp_path / "b", "--warmup-steps", "1")
    assert "warm-up" not in capsys.readouterr().err


# -------------------------------------------------------------- 3. any causal LM by its own module names


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_trains_saves_reloads_and_generates(arch, make_model, sft_file, tmp_path, tokenizer):
    model_dir = make_model(arch)
    out = tmp_path / "run"
    run(model_dir, sft_file, out, "--method", "loramoe", "--num-experts", "2", "--rank", "2")
    saved = AdapterConfig.load(out)
    assert saved.target_modules == FFN_NAMES.get(arch, FFN_NAMES["llama"])
    assert saved.fan_in_fan_out == (arch == "gpt2") and saved.base_model_name_or_path == str(model_dir)
    model, tok = train.load_trained(out)
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    layers = adapter_layers(model)
    assert len(layers) == 2 * len(saved.target_modules)  # every FFN linear of both layers, nothing else
    assert not torch.allclose(logits_of(model, tok), logits_of(base, tok))  # the trained adapters are loaded
    prompt = tok("### Instruction : What is i in uppercase ? ### Response :", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=2, min_new_tokens=2, do_sample=False,
                               pad_token_id=tok.pad_token_id)
    assert generated.shape == (1, prompt["input_ids"].shape[1] + 2)


def test_target_modules_on_the_command_line(make_model, sft_file, tmp_path):
    out = tmp_path / "attn"
    run(make_model("llama"), sft_file, out, "--method", "lora", "--target-modules", "q_proj", "v_proj")
    assert AdapterConfig.load(out).target_modules == ["q_proj", "v_proj"]
    model, _ = train.load_trained(out)
    assert {n.rsplit(".", 1)[-1] for n in adapter_layers(model)} == {"q_proj", "v_proj"}


def test_a_feed_forward_block_matched_in_part_is_refused(make_model):
    phi3 = AutoModelForCausalLM.from_pretrained(make_model("phi3"))
    with pytest.raises(ValueError, match=r"\['gate_proj', 'up_proj'\] matches no nn.Linear or Conv1D"):
        add_loramoe(phi3, target_modules=["gate_proj", "up_proj", "down_proj"])  # (before: down_proj only, silently)
    assert not adapter_layers(phi3)
    llama = AutoModelForCausalLM.from_pretrained(make_model("llama"))
    llama.model.layers[1].mlp.gate_proj = nn.Identity()  # one layer's gate_proj is not a linear any more
    with pytest.raises(ValueError, match="matches modules that are not nn.Linear"):
        add_loramoe(llama)
    del llama.model.layers[1].mlp.gate_proj
    with pytest.raises(ValueError, match=r"is matched only in part: \{'gate_proj': 1, 'up_proj': 2"):
        add_loramoe(llama)


def test_unknown_architecture_needs_target_modules(make_model):
    model = AutoModelForCausalLM.from_pretrained(make_model("llama"))
    model.config.model_type = "my_model"
    with pytest.raises(ValueError, match="no default target_modules for model_type 'my_model'; pass target_modules"):
        add_loramoe(model)
    add_loramoe(model, target_modules=["up_proj"])


def test_conv1d_adapters_from_python(make_model, tokenizer):
    """GPT-2's Conv1D (weight stored (d_in, d_out)): identity at init, LoRA merges into the transposed weight."""
    base = AutoModelForCausalLM.from_pretrained(make_model("gpt2")).eval()
    before = logits_of(base, tokenizer)
    model = add_lora(base, rank=4)
    layer = model.transformer.h[0].mlp.c_fc
    assert layer.fan_in_fan_out and (layer.in_features, layer.out_features) == (32, 48)
    assert torch.equal(logits_of(model, tokenizer), before)
    for m in adapter_layers(model).values():
        nn.init.normal_(m.lora_B)
    x = torch.randn(3, 32)
    y = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)


def test_the_architecture_table_names_linears_that_exist(make_model):
    for arch in ARCHS:
        model = AutoModelForCausalLM.from_pretrained(make_model(arch))
        assert list(TARGET_MODULES[model.config.model_type]) == FFN_NAMES.get(arch, FFN_NAMES["llama"])
        assert len(find_targets(model)) == 2 * len(TARGET_MODULES[model.config.model_type])


# ------------------------------------------------------------------------------ 4. prompt length


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # RoPE (trained silently) and learned positions (IndexError)
def test_samples_longer_than_the_model_positions_are_refused(arch, make_model, tmp_path):
    data = tmp_path / "long.jsonl"
    rows = [{"prompt": "Q : a ?", "answer": "b", "type": 0}] * 3 + [{"prompt": " ".join(["a"] * 40), "answer": "b",
                                                                       "type": 1}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"1 sample\(s\) longer than the model's 16 positions: line 4 \(4\d tokens\)"):
        run(make_model(arch, positions=16), data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ 5. loads all or nothing


def test_a_shape_mismatch_part_way_leaves_the_model_untouched(tiny_llama, tmp_path):
    import copy
    fresh = copy.deepcopy(tiny_llama)
    model = add_loramoe(copy.deepcopy(tiny_llama), num_experts=2, rank=2)
    for m in adapter_layers(model).values():
        nn.init.normal_(m.lora_B)
    save_adapter(model, tmp_path / "a")
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    last = sorted(tensors)[-1]  # the last tensor, after every other one would have been copied
    tensors[last] = torch.zeros(tensors[last].shape[0] + 1, *tensors[last].shape[1:])
    save_file(tensors, tmp_path / "a" / "adapter_model.safetensors")
    state = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="adapter_model.safetensors'.*has shape"):
        load_adapter(tmp_path / "a", fresh)
    assert not adapter_layers(fresh) and all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())
    # the single file of save_adapter_file: the same check first, the adapters untouched
    target = add_loramoe(copy.deepcopy(tiny_llama), num_experts=2, rank=2)
    save_adapter_file(model, tmp_path / "one.safetensors")
    single = load_file(tmp_path / "one.safetensors")
    with safe_open(str(tmp_path / "one.safetensors"), "pt") as f:
        meta = f.metadata()
    last = sorted(single)[-1]
    single[last] = torch.zeros(1)
    save_file(single, tmp_path / "one.safetensors", metadata=meta)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="has shape"):
        load_adapter_file(target, tmp_path / "one.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_corrupt_or_broken_files_are_one_error_naming_the_file(make_model, sft_file, tmp_path, tiny_llama):
    out = tmp_path / "run"
    run(make_model("llama"), sft_file, out)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match=r"broken/adapter_model.safetensors' is not a readable safetensors file"):
        train.load_trained(broken)
    shutil.copy(out / "adapter_model.safetensors", broken)
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken/adapter_config.json' is not a readable JSON file"):
        train.load_trained(broken)
    shutil.copy(out / "adapter_config.json", broken)
    (broken / "settings.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken/settings.json' is not a readable JSON file"):
        train.load_trained(broken)
    (broken / "settings.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(ValueError, match=r"broken/settings.json' lacks \['model', 'dtype'\]"):
        train.load_trained(broken)
    (broken / "settings.json").write_text(json.dumps({"config": {"lr": -1}, "model": "m", "dtype": "float32"}))
    with pytest.raises(ValueError, match=r"broken/settings.json': its config is not a valid FinetuneConfig"):
        train.load_trained(broken)
    model, _ = train.load_trained(out)  # the good one still loads
    assert adapter_layers(model)


def test_paths_are_stored_absolute(make_model, sft_file, tmp_path, monkeypatch):
    model_dir = make_model("llama")
    monkeypatch.chdir(model_dir.parent)
    shutil.copy(sft_file, "sft.jsonl")
    run(model_dir.name, "sft.jsonl", "rel_run")
    monkeypatch.chdir(tmp_path)  # somewhere else
    settings = json.loads((model_dir.parent / "rel_run" / "settings.json").read_text())
    assert settings["model"] == str(model_dir) and settings["data"] == str(model_dir.parent / "sft.jsonl")
    assert AdapterConfig.load(model_dir.parent / "rel_run").base_model_name_or_path == str(model_dir)
    model, _ = train.load_trained(model_dir.parent / "rel_run")
    assert adapter_layers(model)


def test_adapters_of_another_base_model_class_are_refused(make_model, sft_file, tmp_path):
    """A Qwen2 adapter and a LLaMA of the same shapes: the names and shapes fit, the recorded base does not."""
    out = tmp_path / "qwen"
    run(make_model("qwen2"), sft_file, out)
    llama = AutoModelForCausalLM.from_pretrained(make_model("llama"))
    with pytest.raises(ValueError, match=r"adapter_config.json' holds adapters trained on a Qwen2ForCausalLM"):
        train.load_trained(out, model_dir=make_model("llama"))
    with pytest.raises(ValueError, match="trained on a Qwen2ForCausalLM .*not on this LlamaForCausalLM"):
        load_adapter(out, llama)
    assert not adapter_layers(llama)


def test_dropout_does_not_block_a_load(make_model, sft_file, tmp_path, tiny_llama):
    """The command's adapters (dropout 0) load into add_loramoe's defaults, and a dropout-0.1 file into a model
    with dropout 0 (dropout is not part of the trained weights)."""
    out = tmp_path / "run"
    run(make_model("llama"), sft_file, out)
    model = add_loramoe(AutoModelForCausalLM.from_pretrained(make_model("llama")))
    load_adapter(out, model)
    import copy
    a = add_loramoe(copy.deepcopy(tiny_llama), num_experts=2, rank=2, dropout=0.1)
    save_adapter_file(a, tmp_path / "a.safetensors")
    load_adapter_file(add_loramoe(copy.deepcopy(tiny_llama), num_experts=2, rank=2, dropout=0.0), tmp_path / "a.safetensors")


def test_files_of_earlier_versions_still_load(tiny_llama, tmp_path):
    """A save_adapter_file file with the settings as they were stored before AdapterConfig (adapter, rank, alpha,
    dropout) loads; SLIM's buffers round-trip through an adapter folder."""
    import copy
    model = add_loramoe(copy.deepcopy(tiny_llama), num_experts=2, rank=2, num_identity_experts=2, num_clusters=3)
    model.train()(torch.randint(0, 64, (2, 9)))  # one sliding step: the clusters move
    path = tmp_path / "old.safetensors"
    save_adapter_file(model, path)
    old = {"adapter": "loramoe", "target_modules": ["gate_proj", "up_proj", "down_proj"], "num_experts": 2,
           "rank": 2, "alpha": 32, "dropout": 0.05, "num_identity_experts": 2, "num_clusters": 3}
    save_file(load_file(path), path, metadata={"minimal_loramoe": json.dumps(old)})
    other = add_loramoe(copy.deepcopy(tiny_llama), num_experts=2, rank=2, num_identity_experts=2, num_clusters=3)
    load_adapter_file(other, path)
    save_adapter(model, tmp_path / "folder")
    again = load_adapter(tmp_path / "folder", copy.deepcopy(tiny_llama))
    for a, b in ((model, other), (model, again)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------ 6. PEFT's layout


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_plain_lora_run_is_a_peft_adapter_with_the_same_logits(arch, make_model, sft_file, tmp_path, tokenizer):
    peft = pytest.importorskip("peft")
    out = tmp_path / "lora"
    run(make_model(arch), sft_file, out, "--method", "lora", "--rank", "1")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "history.json", "settings.json"]
    ours, _ = train.load_trained(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "unexpected keyword arguments" from PEFT's config
        theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(make_model(arch)), out).eval()
    assert theirs.peft_config["default"].r == 6 and theirs.peft_config["default"].fan_in_fan_out == (arch == "gpt2")
    assert torch.equal(logits_of(theirs, tokenizer), logits_of(ours, tokenizer))
    base = AutoModelForCausalLM.from_pretrained(make_model(arch)).eval()
    assert not torch.allclose(logits_of(theirs, tokenizer), logits_of(base, tokenizer))  # the adapter does something


def test_a_peft_lora_folder_loads_in_our_package(make_model, tmp_path, tokenizer):
    peft = pytest.importorskip("peft")
    base = AutoModelForCausalLM.from_pretrained(make_model("llama"))
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["up_proj", "down_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(p)
    model.save_pretrained(tmp_path / "peft")
    expected = logits_of(model.eval(), tokenizer)
    ours = load_adapter(tmp_path / "peft", AutoModelForCausalLM.from_pretrained(make_model("llama"))).eval()
    torch.testing.assert_close(logits_of(ours, tokenizer), expected, rtol=0, atol=1e-6)


def test_a_loramoe_folder_loads_in_one_call(make_model, sft_file, tmp_path, tokenizer):
    out = tmp_path / "moe"
    run(make_model("llama"), sft_file, out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORAMOE" and config["base_model_name_or_path"] == str(make_model("llama"))
    assert config["target_modules"] == ["gate_proj", "up_proj", "down_proj"] and config["num_experts"] == 6
    assert config["auto_mapping"] == {"base_model_class": "LlamaForCausalLM"}
    assert AdapterConfig.from_dict(config) == AdapterConfig.load(out)
    model = load_adapter(out).eval()  # the base model from the recorded path
    trained, _ = train.load_trained(out)
    assert torch.equal(logits_of(model, tokenizer), logits_of(trained, tokenizer))


# ------------------------------------------------------------------------------ the one adapter config


def test_adapter_defaults_live_in_adapter_config_only():
    import inspect
    d = AdapterConfig()
    loramoe = inspect.signature(add_loramoe).parameters
    assert (loramoe["num_experts"].default, loramoe["rank"].default, loramoe["alpha"].default,
            loramoe["dropout"].default) == (d.num_experts, d.r, d.lora_alpha, d.lora_dropout)
    assert inspect.signature(add_lora).parameters["rank"].default == d.num_experts * d.r
    f = FinetuneConfig()
    assert (f.num_experts, f.rank, f.alpha, f.dropout) == (d.num_experts, d.r, d.lora_alpha, d.lora_dropout)
    args = train.build_parser().parse_args(["--model", "m", "--data", "d", "--out", "o"])
    for field in fields(FinetuneConfig):  # every flag's default is the config's
        assert getattr(args, field.name) == field.default, field.name
    assert args.schedule == "constant" and args.dropout == 0.0


def test_method_code_imports_nothing_of_the_toy_world():
    toy = {"world", "tokenizer", "model", "pretrain", "reproduce", "fronts", "tune", "smollm", "smollm_experiment"}
    for module in ("lora", "loramoe", "balance", "inject", "slim", "finetune", "train", "config", "checkpoint"):
        tree = ast.parse((REPO / "minimal_loramoe" / f"{module}.py").read_text())
        imported = {n.module.split(".")[0] for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.level and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level and not n.module
                     for a in n.names}
        assert not imported & toy, (module, imported & toy)
