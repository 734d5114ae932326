"""The training command ``python -m minimal_loramoe.train``: one process, two processes (DDP on CPU, gloo), and the
bad input it refuses.

The two-process tests (marked slow) start ``accelerate launch`` with two processes on the CPU (about 30-40 s each on
a busy 2-core machine, most of it starting Python twice) and check that it trains exactly like one process with the
same global batch, and that a stopped and resumed two-process run ends exactly where the uninterrupted one does.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minimal_loramoe import adapter_layers, train
from minimal_loramoe.sft import answer_loss, encode_examples
from minimal_loramoe.lab.model import DEFAULT_CHECKPOINT, load_pretrained

REPO = Path(__file__).resolve().parent.parent
COMMON = ["--model", str(DEFAULT_CHECKPOINT), "--steps", "6", "--lr", "1e-3", "--warmup-steps", "2", "--cpu",
          "--no-progress"]


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory, world_sft_file):
    """64 typed samples of the tiny world (30 % knowledge questions, type 1) as jsonl."""
    return world_sft_file(tmp_path_factory, 64)


@pytest.fixture(scope="module")
def one_process_run(sft_file, tmp_path_factory):
    """LoRAMoE with the corrected balancing loss, 6 steps of 8 samples, in this process."""
    out = tmp_path_factory.mktemp("one")
    result = train.main([*COMMON, "--data", str(sft_file), "--out", str(out), "--batch-size", "8"])
    return out, result


def free_port() -> int:
    with socket.socket() as s:  # (other test runs on the same machine must not collide on torchrun's port 29500)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_run_writes_adapters_settings_and_history(one_process_run):
    out, result = one_process_run
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "history.json", "settings.json"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["config"]["method"] == "loramoe" and settings["config"]["steps"] == 6
    assert settings["num_processes"] == 1 and settings["global_batch_size"] == 8
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == len(history["lbc"]) == 6
    # only adapter tensors in the file, under PEFT's names: experts and routers of the 3 FFN linears of both layers
    names = load_file(out / "adapter_model.safetensors").keys()
    assert len(names) == 2 * 3 * 3 and all(n.startswith("base_model.model.model.layers.") for n in names)
    assert all(n.endswith((".lora_A.weight", ".lora_B.weight", ".router.weight")) for n in names)
    assert all(".mlp." in n and ".base_layer." not in n for n in names)


def test_trained_adapters_load_and_generate(one_process_run, sft_file):
    out, _ = one_process_run
    model, tokenizer = train.load_trained(out)
    assert len(adapter_layers(model)) == 6 and not model.training
    base, _, _ = load_pretrained()
    rows = [json.loads(line) for line in sft_file.read_text().splitlines()]
    batch = encode_examples(tokenizer, [r["prompt"] for r in rows], [r["answer"] for r in rows])
    with torch.no_grad():  # it learned: a lower answer loss on its training data than the base model
        assert answer_loss(model, batch) < answer_loss(base, batch) - 0.5
    prompt = tokenizer("### Instruction : What is i in uppercase ? ### Response :", return_tensors="pt")
    with torch.no_grad():
        tuned_logits, base_logits = model(**prompt).logits, base(**prompt).logits
    assert not torch.allclose(tuned_logits, base_logits)  # the loaded adapters change the model
    generated = model.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape == (1, prompt["input_ids"].shape[1] + 3)


@pytest.fixture(scope="module")
def two_process_run(sft_file, tmp_path_factory):
    """The run of :func:`one_process_run` on 2 CPU processes (DDP, gloo), 4 samples each."""
    return launch_two_processes(sft_file, tmp_path_factory.mktemp("two") / "two")


@pytest.mark.slow
def test_two_processes_train_exactly_like_one(one_process_run, two_process_run):
    """DDP on 2 CPU processes (gloo), 4 samples each, against 1 process with 8: the same model up to rounding.

    Why the tolerance 1e-5: both runs see the same global batches and minimise the same loss (the cross-entropy
    over the global batch's answer tokens, the balancing loss over all its samples), so they differ only by
    float32 rounding -- gradients summed in another order -- which Adam turns into weight differences of ~1e-6
    after 6 steps at lr 1e-3 (measured: 8e-7). Averaging each process's own mean loss and balancing loss instead
    (the usual DDP default) moves the same weights by ~4e-3, 400 times the tolerance, and the training itself
    moves lora_B (zero at the start) by ~3e-3.
    """
    one, _ = one_process_run
    two = two_process_run
    model, _ = train.load_trained(two)  # loads the adapter folder
    assert len(adapter_layers(model)) == 6
    assert_same_training(one, two)


@pytest.mark.slow
def test_two_processes_stop_and_resume_exactly_like_the_uninterrupted_run(two_process_run, sft_file, tmp_path):
    """Two processes stopped after step 3 of 6 (as on Ctrl-C: a checkpoint, nothing else), then --resume: the same
    adapters, bit for bit, and the same losses as the two processes that ran the 6 steps in one go."""
    out = tmp_path / "resumed"
    stopped = run_two_processes(sft_file, out, ["--stop-after", "3"])
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "stopped after step 3 of 6; checkpoint written" in stopped.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors"]
    launch_two_processes(sft_file, out, ["--resume"])
    a, b = load_file(two_process_run / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    h1, h2 = (json.loads((d / "history.json").read_text()) for d in (two_process_run, out))
    assert h1 == h2


@pytest.mark.slow
def test_two_processes_train_slim_parts_exactly_like_one(sft_file, tmp_path):
    """The same check with SLIM's parts that have to agree too: top-2 routing, two identity experts (the balancing
    loss then renormalises the LoRA experts' gates before the gather) and the L1 penalty, which every process adds
    unscaled (scaling it by P, as the other losses are, makes the weights differ by ~3e-3, measured)."""
    slim = ["--top-k", "2", "--num-identity-experts", "2", "--l1-weight", "10"]
    one = tmp_path / "one"
    train.main([*COMMON, *slim, "--data", str(sft_file), "--out", str(one), "--batch-size", "8"])
    two = launch_two_processes(sft_file, tmp_path / "two", slim)
    assert json.loads((two / "settings.json").read_text())["config"]["top_k"] == 2
    h1 = assert_same_training(one, two)
    assert len(h1["l1"]) == 6 and h1["l1"][0] > 0


def launch_two_processes(sft_file, out, extra=()):
    """``python -m minimal_loramoe.train`` on 2 CPU processes (DDP, gloo), 4 samples each; returns ``out``."""
    done = run_two_processes(sft_file, out, extra)
    assert done.returncode == 0, done.stderr[-3000:]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["num_processes"] == 2 and settings["global_batch_size"] == 8
    assert "MULTI_CPU" in settings["distributed_type"]
    return out


def run_two_processes(sft_file, out, extra=()) -> subprocess.CompletedProcess:
    # accelerate's own --cpu flag starts ONE process unless mpirun is set up; --multi_gpu starts the processes
    # with torchrun, and train's --cpu makes them a CPU process group (gloo).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "minimal_loramoe.train",
           *COMMON, *extra, "--data", str(sft_file), "--out", str(out), "--batch-size", "4"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def assert_same_training(one, two) -> dict:
    """The adapters and losses of two runs agree up to float32 rounding; returns the first run's history."""
    a, b = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)
    moved = max(a[n].abs().max().item() for n in a if n.endswith("lora_B.weight"))
    assert moved > 100 * 1e-5  # the tolerance is small against what training changes
    h1, h2 = (json.loads((d / "history.json").read_text()) for d in (one, two))
    torch.testing.assert_close(torch.tensor(h2["loss"]), torch.tensor(h1["loss"]), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(h2["lbc"]), torch.tensor(h1["lbc"]), rtol=1e-4, atol=0)
    torch.testing.assert_close(torch.tensor(h2["l1"]), torch.tensor(h1["l1"]), rtol=1e-5, atol=0)
    return h1


def test_slim_on_the_command_line(sft_file, tmp_path):
    """``--method slim`` takes SLIM's settings, records the L1 penalty, and saves the clusters with the adapters."""
    out = tmp_path / "slim"
    train.main([*COMMON, "--method", "slim", "--steps", "2", "--batch-size", "8", "--data", str(sft_file),
                "--out", str(out)])
    config = json.loads((out / "settings.json").read_text())["config"]
    assert (config["top_k"], config["num_identity_experts"], config["num_clusters"]) == (2, 2, 8)
    assert config["l1_weight"] == 10.0 and config["mask_rate"] == 0.5
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == len(history["l1"]) == 2 and history["lbc"] == []
    saved = load_file(out / "adapter_model.safetensors")
    assert sum(n.endswith("clusters.centres") for n in saved) == 6
    model, _ = train.load_trained(out)
    layer = next(iter(adapter_layers(model).values()))
    assert layer.top_k == 2 and layer.num_identity_experts == 2 and layer.clusters.num_updates == 2


def test_full_finetuning_saves_a_model_folder(sft_file, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    train.main(["--model", str(DEFAULT_CHECKPOINT), "--data", str(sft_file), "--out", str(out), "--method",
                "full_ft", "--steps", "2", "--batch-size", "8", "--lr", "1e-4", "--cpu", "--no-progress"])
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_model.safetensors").exists()
    tuned = AutoModelForCausalLM.from_pretrained(out)
    base, _, _ = load_pretrained()
    w0, w1 = base.model.layers[0].mlp.up_proj.weight, tuned.model.layers[0].mlp.up_proj.weight
    assert w1.shape == w0.shape and not torch.equal(w1, w0)
    loaded, _ = train.load_trained(out)
    assert torch.equal(loaded.model.layers[0].mlp.up_proj.weight, w1)


# ---------------------------------------------------------------- bad input


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"prompt": "Q : capital ? A :", "answer": "Paris", "type": 1}


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "p", "answer": "a"}], r"line 1: missing \['type'\]"),
    ([GOOD, {"answer": "a", "type": 0}], r"line 2: missing \['prompt'\]"),
    ([{**GOOD, "type": 2}], r"type must be 0 \(other task\) or 1 \(world knowledge\), got 2"),
    ([{**GOOD, "type": True}], r"type must be 0 .* got True"),
    ([{**GOOD, "answer": ""}], r"answer a non-empty string"),
    (["not json"], r"line 1: not valid JSON"),
    (["[1, 2]"], r"must be a JSON object"),
    ([], r"holds no samples"),
])
def test_bad_data_is_refused(tmp_path, rows, message):
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        train.main(["--model", str(DEFAULT_CHECKPOINT), "--data", str(data), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--method", "qlora"], r"method must be one of \('full_ft', 'lora'"),
    (["--num-experts", "5"], r"num_experts must be even for method 'loramoe'"),
    (["--method", "loramoe_official_lbc", "--num-experts", "3"], r"num_experts must be even"),
    (["--schedule", "linear"], r"schedule must be one of \('constant', 'cosine'\)"),
    (["--steps", "0"], r"steps must be >= 1"),
    (["--dtype", "float8"], r"--dtype must be one of \('float32', 'bfloat16', 'float16'\)"),
    (["--system", "Be brief."], r"--system needs --chat"),
    (["--batch-size", "1000"], r"1000 samples per step, more than the 1 samples of --data"),
    (["--chat", "--batch-size", "1"], r"--chat: the tokenizer .* has no chat template"),
    (["--method", "slim", "--top-k", "0"], r"top_k must be None \(dense\) or an integer in \[1, 8\]"),
    (["--method", "slim", "--mask-rate", "1"], r"mask_rate must be a number in \[0, 1\)"),
    (["--method", "lora", "--l1-weight", "1"], r"need a LoRAMoE-layer method, not method='lora'"),
])
def test_bad_settings_are_refused(tmp_path, extra, message):
    data = write_jsonl(tmp_path / "ok.jsonl", [GOOD])
    with pytest.raises(ValueError, match=message):
        train.main(["--model", str(DEFAULT_CHECKPOINT), "--data", str(data), "--out", str(tmp_path / "out"),
                    "--cpu", *extra])
    assert not (tmp_path / "out").exists()


def test_odd_expert_count_is_fine_without_the_constraint(sft_file, tmp_path):
    train.main(["--model", str(DEFAULT_CHECKPOINT), "--data", str(sft_file), "--out", str(tmp_path / "o"),
                "--method", "loramoe_no_lbc", "--num-experts", "3", "--steps", "1", "--batch-size", "4", "--cpu",
                "--no-progress"])
    assert (tmp_path / "o" / "adapter_model.safetensors").is_file()


def test_missing_model_and_data_are_refused(tmp_path):
    data = write_jsonl(tmp_path / "ok.jsonl", [GOOD])
    with pytest.raises(ValueError, match="--model: no Hugging Face model folder"):
        train.main(["--model", str(tmp_path / "nowhere"), "--data", str(data), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--data: no file at"):
        train.main(["--model", str(DEFAULT_CHECKPOINT), "--data", str(tmp_path / "no.jsonl"),
                    "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="no settings.json"):
        train.load_trained(tmp_path)


def test_the_command_line_reports_bad_input_in_one_line(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        train.cli(["--model", str(tmp_path), "--data", "x.jsonl", "--out", str(tmp_path / "o")])
    assert str(exit_info.value.code).startswith("python -m minimal_loramoe.train: error: --model:")
