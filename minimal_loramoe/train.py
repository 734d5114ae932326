"""Fine-tune any Hugging Face causal LM with LoRAMoE (or any method of the book): ``python -m minimal_loramoe.train``.

    python -m minimal_loramoe.train --model minimal_loramoe/data/tiny_llama --data sft.jsonl --method loramoe --out runs/a
    accelerate launch --num_processes 2 -m minimal_loramoe.train ...    # the same run on 2 processes (DDP)

The data is a jsonl file with one sample per line, ``{"prompt": "...", "answer": "...", "type": 1}``: type 1 = a
world-knowledge sample, 0 = any other task -- the sample types the localized balancing constraint needs
(Dou et al., 2024, Sec. 3.3). Other keys are ignored. The loss is the cross-entropy on the answer tokens (and the
eos token after them) only: the prompt is context. The loop is the book's one SFT loop,
:func:`minimal_loramoe.finetune.sft_loop`, run through ``accelerate``, so the same command trains on one CPU, one
GPU, or many processes -- whatever ``accelerate launch`` (and ``accelerate config``) set up.

The flags of the run's settings are built from ``finetune.FinetuneConfig`` (its defaults are the command's; the
adapter defaults come from ``config.AdapterConfig``). ``--target-modules`` names the linears to adapt; by default
the feed-forward linears of the model's architecture (``config.TARGET_MODULES``, by ``config.model_type``).

Everything is checked before the model loads: every number (finite, in range), the data (line by line), the
length of every sample against the model's positions (a longer one is refused, naming its line: truncating would
cut the answer, which is what the loss trains on), and ``--out``: it must be a folder this process can write in,
not the ``--model`` folder, and empty unless ``--overwrite`` (replace what a previous run wrote) or ``--resume``.

What it writes into ``--out``:

* ``adapter_config.json`` and ``adapter_model.safetensors``: the adapters only, in PEFT's layout (the
  ``AdapterConfig``: every setting, the base model, the target modules; PEFT's tensor names). A ``--method lora``
  folder is a PEFT LoRA adapter (``PeftModel.from_pretrained`` loads it); every folder loads with
  :func:`load_trained` or ``inject.load_adapter``. For ``--method full_ft`` the whole model instead, with
  ``save_pretrained`` (``config.json``, ``model.safetensors``) and the tokenizer: ``--out`` is then a model folder;
* ``settings.json``: every setting it ran with (the ``FinetuneConfig``, absolute model and data paths, processes,
  global batch);
* ``history.json``: the answer-only cross-entropy, the balancing loss and SLIM's L1 penalty of every step (the
  last two only for the methods that have them);
* while it runs, ``checkpoint.safetensors`` every ``--save-every`` steps and on Ctrl-C (SIGINT) or SIGTERM
  (see :mod:`minimal_loramoe.checkpoint`); the same command with ``--resume`` continues the run from it, to the
  result the uninterrupted run would have had. A loss that is not finite stops the run, naming the step, before
  the update; the last checkpoint is kept. The checkpoint is deleted once the result is written.

``--method`` is any method of :mod:`minimal_loramoe.finetune`, SLIM's included (``--method slim``, with the
settings of its entry in ``methods.TABLE``; ``--top-k``, ``--num-identity-experts``, ``--num-clusters``,
``--yield-scale``, ``--l1-weight`` and ``--mask-rate`` override them). This command does not evaluate, so
``--mask-rate`` is only recorded: use the trained SLIM model as it was meant to be evaluated, DARE-masked, with
``with slim.dare_masked(model, config.mask_rate, config.seed): ...``.

``--batch-size`` is per process: P processes with ``--batch-size B`` train like one process with
``--batch-size P*B`` (same seed), up to floating-point rounding, except for dropout masks (each process draws its
own) and SLIM's cluster buffers (they follow process 0's slices). Why: ``sft_loop`` and book/design_notes.md.
"""
import argparse
import hashlib
import json
import signal
import sys
import tempfile
import time
import types
import typing
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT_FILE
from .config import CONFIG_FILE
from .sft import encode_examples
from .finetune import COLUMNS, FinetuneConfig, TrainingStopped, plain_encoder, prepare_model, sft_loop
from .inject import ADAPTER_FILE, load_adapter, load_adapter_file
from .methods import get_method
from .utils import atomic_write_text, set_seed

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SETTINGS_FILE, HISTORY_FILE = "settings.json", "history.json"
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def _read_rows(path) -> tuple[list[dict], list[int]]:
    """The samples of a jsonl file and the line number of each (see :func:`read_sft_jsonl`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data: no file at {str(path)!r} (a jsonl file, one {{'prompt', 'answer', 'type'}} "
                         "object per line)")
    rows, lines = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"--data {path}, line {i}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"--data {path}, line {i}: must be a JSON object with the keys {COLUMNS}")
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"--data {path}, line {i}: missing {missing}; every line needs the keys {COLUMNS}")
        if not isinstance(row["prompt"], str) or not isinstance(row["answer"], str) or not row["answer"]:
            raise ValueError(f"--data {path}, line {i}: prompt must be a string and answer a non-empty string")
        if type(row["type"]) is not int or row["type"] not in (0, 1):  # (a JSON true is not a type)
            raise ValueError(f"--data {path}, line {i}: type must be 0 (other task) or 1 (world knowledge), "
                             f"got {row['type']!r}")
        rows.append({c: row[c] for c in COLUMNS})
        lines.append(i)
    if not rows:
        raise ValueError(f"--data {path}: the file holds no samples")
    return rows, lines


def read_sft_jsonl(path):
    """The samples of a jsonl file as a ``datasets.Dataset`` with columns prompt, answer, type.

    Refuses (``ValueError`` naming the line) a line that is not a JSON object with a string prompt, a non-empty
    string answer and a type of 0 or 1, and a file without samples.
    """
    from datasets import Dataset

    return Dataset.from_list(_read_rows(path)[0])


def check_model_dir(path) -> Path:
    """``path`` (absolute) if it is a Hugging Face model folder (it has a ``config.json``), else a ``ValueError``."""
    path = Path(path).absolute()
    if not (path / "config.json").is_file():
        raise ValueError(f"--model: no Hugging Face model folder at {str(path)!r} (a folder with config.json, "
                         "the weights and the tokenizer, as save_pretrained writes it)")
    return path


def check_out_dir(out, model_dir: Path, overwrite: bool, resume: bool) -> Path:
    """``--out`` as an absolute path, checked before any work: not a file, not the ``--model`` folder, empty unless
    ``overwrite`` or ``resume`` (which needs a checkpoint in it), and a folder this process can write in (probed
    with a temporary file in it, or in its nearest existing parent). Creates nothing."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; --out must be a folder (new or empty)")
    if out.exists() and out.resolve() == model_dir.resolve():
        raise ValueError(f"--out {str(out)!r} is the --model folder; write the run somewhere else (full_ft would "
                         "replace the base model's weights)")
    if resume:
        if not (out / CHECKPOINT_FILE).is_file():
            raise ValueError(f"--resume: no {CHECKPOINT_FILE} in {str(out)!r}; it is written every --save-every "
                             "steps and when a run is interrupted")
        if overwrite:
            raise ValueError("--resume continues the run in --out; --overwrite starts a new one: pass one of them")
    elif out.exists() and any(out.iterdir()) and not overwrite:
        held = sorted(p.name for p in out.iterdir())
        raise ValueError(f"--out {str(out)!r} is not empty (it holds {held[:4]}{' ...' if len(held) > 4 else ''}); "
                         "pass --overwrite to replace what a previous run wrote there, or --resume to continue the "
                         f"run whose {CHECKPOINT_FILE} it holds")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"--out {str(out)!r}: {str(probe)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise ValueError(f"--out {str(out)!r}: cannot write in {str(probe)!r} ({err.strerror or err})") from None
    return out


def render_chat(tokenizer, prompt: str, system: str | None = None, history=()) -> str:
    """The text a chat model sees before it answers ``prompt``: the tokenizer's own chat template with one user
    turn (after a system message, if ``system`` is not None, and the earlier ``(prompt, answer)`` turns of
    ``history``, if any) and the assistant header; special tokens included."""
    head = [] if system is None else [{"role": "system", "content": system}]
    for earlier, answer in history:
        head += [{"role": "user", "content": earlier}, {"role": "assistant", "content": answer}]
    return tokenizer.apply_chat_template(head + [{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def chat_encoder(system: str | None = None):
    """A batch encoder for chat (instruct) models: each prompt becomes one user turn rendered with the tokenizer's
    own chat template (:func:`render_chat`, after a system message, if given), and the answer ends with
    ``tokenizer.eos_token`` -- in instruct models usually the end-of-turn token; check that it is for yours."""

    def encode(tokenizer, prompts, answers):
        rendered = [render_chat(tokenizer, p, system) for p in prompts]
        return encode_examples(tokenizer, rendered, answers, add_eos=True, prompt_special_tokens=False)

    return encode


def max_positions(model_config) -> int | None:
    """The longest sequence the model has positions for (``max_position_embeddings`` or the like), or None."""
    for key in POSITION_KEYS:
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_lengths(tokenizer, encode, rows: list[dict], lines: list[int], limit: int | None, data) -> None:
    """Refuse (``ValueError`` naming the lines) samples whose tokens (prompt, answer, eos) exceed ``limit``."""
    if limit is None:
        return
    too_long = []
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        lengths = encode(tokenizer, [r["prompt"] for r in chunk], [r["answer"] for r in chunk])["attention_mask"].sum(1)
        too_long += [(lines[start + i], int(n)) for i, n in enumerate(lengths.tolist()) if n > limit]
    if too_long:
        shown = ", ".join(f"line {i} ({n} tokens)" for i, n in too_long[:3])
        raise ValueError(f"--data {data}: {len(too_long)} sample(s) longer than the model's {limit} positions: "
                         f"{shown}{' ...' if len(too_long) > 3 else ''}; shorten them (the command does not truncate: "
                         "that would cut the answer it trains on)")


# ------------------------------------------------------------------------------------------------ the flags


def _flag_type(annotation):
    """(type, nargs) of a FinetuneConfig field: ``int | None`` -> (int, None), ``list[str] | None`` -> (str, '+')."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] if isinstance(
        annotation, types.UnionType) else [annotation]
    kind = args[0]
    if typing.get_origin(kind) is list:
        return typing.get_args(kind)[0], "+"
    return kind, None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minimal_loramoe.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face model folder (config.json, weights, tokenizer)")
    p.add_argument("--data", required=True, help="jsonl file, one {prompt, answer, type} object per line")
    p.add_argument("--out", required=True, help="folder to write the adapters (or model), settings and history to")
    run = p.add_argument_group("the run's settings (finetune.FinetuneConfig)")
    slim = "; default: the method's (methods.TABLE; plain LoRAMoE: off)"
    for f in fields(FinetuneConfig):
        kind, nargs = _flag_type(f.type)
        help_text = f.metadata.get("help", "") + (slim if f.name in ("top_k", "num_identity_experts", "num_clusters",
                                                                     "yield_scale", "l1_weight", "mask_rate") else "")
        run.add_argument("--" + f.name.replace("_", "-"), type=kind, nargs=nargs, help=help_text,
                         default=None if f.default is MISSING else f.default)
    keep = p.add_argument_group("keeping the work")
    keep.add_argument("--overwrite", action="store_true", help="replace what a previous run wrote into --out")
    keep.add_argument("--save-every", type=int, help="write checkpoint.safetensors every N steps (it is also "
                      "written on Ctrl-C / SIGTERM)")
    keep.add_argument("--resume", action="store_true", help="continue the stopped run whose checkpoint is in --out "
                      "(the same command otherwise)")
    keep.add_argument("--stop-after", type=int, help="stop after step N with a checkpoint, as on Ctrl-C (for jobs "
                      "with a time limit; --resume continues)")
    p.add_argument("--chat", action="store_true", help="render prompts with the tokenizer's chat template")
    p.add_argument("--system", help="with --chat: a system message before every prompt")
    p.add_argument("--dtype", default="float32", help=f"weights of the loaded model: one of {tuple(DTYPES)}")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is there")
    p.add_argument("--find-unused-parameters", action="store_true",
                   help="DDP: for models with trainable parameters that some forward passes do not use")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


class _StopOnSignal:
    """Within the ``with`` block, SIGINT and SIGTERM only set ``self.signal`` (the loop then stops after its step,
    with a checkpoint); a second SIGINT interrupts at once."""

    def __init__(self):
        self.signal, self.saved = None, {}

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():  # (handlers can only be set there)
            for s in (signal.SIGINT, signal.SIGTERM):
                self.saved[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self.saved.items():
            signal.signal(s, handler)


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv=None) -> dict:
    """Run the command (``argv`` as on the command line); returns ``{"settings", "history"}``.

    Raises ``ValueError`` for bad input (before any work) and :class:`~minimal_loramoe.finetune.TrainingStopped`
    when the run stops early (an interrupt, ``--stop-after``, a loss that is not finite)."""
    args = build_parser().parse_args(argv)
    # 1. everything that can be checked without loading anything
    config = FinetuneConfig(**{f.name: getattr(args, f.name) for f in fields(FinetuneConfig)})
    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {tuple(DTYPES)}, got {args.dtype!r}")
    if args.system is not None and not args.chat:
        raise ValueError("--system needs --chat (a system message is part of a chat template)")
    for name in ("save_every", "stop_after"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    model_dir = check_model_dir(args.model)
    data_path = Path(args.data).absolute()
    rows, lines = _read_rows(data_path)
    out = check_out_dir(args.out, model_dir, args.overwrite, args.resume)

    # 2. the processes (one, or as many as `accelerate launch` started) and the global batch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from datasets import Dataset

    # Frozen parameters (the backbone, loramoe_uniform_router's router) have requires_grad=False, so DDP does
    # not even track them; every trainable adapter parameter takes part in every forward pass (the router is a
    # dense softmax, and with SLIM's top-K the unchosen experts still ride along in the same matmuls, gate 0).
    # find_unused_parameters costs a graph traversal per step and is needed only for unusual models.
    accelerator = Accelerator(cpu=args.cpu, kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=args.find_unused_parameters)])
    global_batch = config.batch_size * accelerator.num_processes
    if global_batch > len(rows):
        raise ValueError(f"--batch-size {config.batch_size} x {accelerator.num_processes} processes = "
                         f"{global_batch} samples per step, more than the {len(rows)} samples of --data")
    if config.steps is None:  # one pass in full global batches: the same steps whatever the number of processes
        config = replace(config, steps=len(rows) // global_batch)
    if args.stop_after is not None and args.stop_after >= config.steps:
        raise ValueError(f"--stop-after {args.stop_after}: the run has only {config.steps} steps")

    # 3. tokenizer, and every sample against the model's positions
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if args.chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--chat: the tokenizer in {str(model_dir)!r} has no chat template")
    encode = chat_encoder(args.system) if args.chat else plain_encoder
    check_lengths(tokenizer, encode, rows, lines, max_positions(AutoConfig.from_pretrained(model_dir)), data_path)
    is_main = accelerator.is_main_process
    if config.steps <= config.warmup_steps and is_main:
        print(f"warning: the run's {config.steps} steps do not exceed its {config.warmup_steps} warm-up steps: the "
              f"learning rate {'never reaches' if config.steps < config.warmup_steps else 'reaches only at the last step'}"
              f" --lr {config.lr:g}; pass a smaller --warmup-steps (or more --steps)", file=sys.stderr)

    # 4. the model
    set_seed(config.seed)  # the same adapter initialisation in every process
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[args.dtype])
    model = prepare_model(model, config, copy_model=False)
    set_seed(config.seed + accelerator.process_index)  # but each process its own dropout masks

    # 5. train and save
    if args.overwrite and is_main and (out / CHECKPOINT_FILE).exists():
        (out / CHECKPOINT_FILE).unlink()  # the checkpoint of the run being replaced
    out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    t0 = time.time()
    with _StopOnSignal() as stop:
        try:
            history = sft_loop(model, tokenizer, Dataset.from_list(rows), config, encode=encode,
                               accelerator=accelerator, save_to=out, progress=not args.no_progress,
                               checkpoint=out / CHECKPOINT_FILE, save_every=args.save_every, resume=args.resume,
                               should_stop=lambda done: stop.signal is not None or done == args.stop_after,
                               checkpoint_extra={"model": str(model_dir), "data_sha256": _sha256(data_path)})
        except TrainingStopped as err:
            if not err.nonfinite:
                why = f"{stop.signal} received" if stop.signal else f"--stop-after {args.stop_after}"
                resume = ("; continue with the same command and --resume" if err.checkpoint else "")
                err.args = (f"{why}: {err}{resume}",)
            accelerator.end_training()
            raise
    settings = {"config": asdict(config), "model": str(model_dir), "data": str(data_path), "chat": args.chat,
                "system": args.system, "dtype": args.dtype, "num_processes": accelerator.num_processes,
                "global_batch_size": global_batch, "distributed_type": str(accelerator.distributed_type),
                "resumed": args.resume, "seconds": round(time.time() - t0, 1), "torch": torch.__version__}
    if is_main:
        atomic_write_text(out / HISTORY_FILE, json.dumps({k: history[k] for k in ("loss", "lbc", "l1")}))
        atomic_write_text(out / SETTINGS_FILE, json.dumps(settings, indent=1))
        lbc = f", LBC {history['lbc'][-1]:.4f}" if history["lbc"] else ""
        print(f"{config.method}: {config.steps} steps of {global_batch} samples on {accelerator.num_processes} "
              f"process(es) in {settings['seconds']:.0f} s; last loss {history['loss'][-1]:.4f}{lbc}; wrote {out}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"settings": settings, "history": history}


def read_settings(out) -> tuple[dict, FinetuneConfig]:
    """``settings.json`` of a run and its ``FinetuneConfig``; one ``ValueError`` naming the file if it is missing,
    not JSON, or lacks what a run writes."""
    path = Path(out) / SETTINGS_FILE
    if not path.is_file():
        raise ValueError(f"out: no {SETTINGS_FILE} in {str(Path(out))!r}; is it the --out folder of a finished "
                         "training run?")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable JSON file: {err}") from None
    missing = [k for k in ("config", "model", "dtype") if not isinstance(settings, dict) or k not in settings]
    if missing:
        raise ValueError(f"{str(path)!r} lacks {missing}; it is not the settings file of a training run")
    if settings["dtype"] not in DTYPES:
        raise ValueError(f"{str(path)!r}: dtype must be one of {tuple(DTYPES)}, got {settings['dtype']!r}")
    known = {f.name for f in fields(FinetuneConfig)}
    try:
        config = FinetuneConfig(**{k: v for k, v in settings["config"].items() if k in known})
    except (AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{str(path)!r}: its config is not a valid FinetuneConfig ({err})") from None
    return settings, config


def load_trained(out, model_dir=None, device=None):
    """The model a run of this command trained, ready to generate: ``(model, tokenizer)``, in eval mode.

    Reads ``settings.json`` in ``out``; loads the base model from ``model_dir`` (default: the ``--model`` of the
    run, an absolute path) and the adapters of ``out`` (``inject.load_adapter``: all or nothing, and refused for a
    base model of another class than the one recorded); for ``full_ft`` it loads ``out`` itself. Every problem is
    one ``ValueError`` naming the file. The model comes unmasked; a SLIM run with ``mask_rate > 0`` is meant to be
    used DARE-masked (module docstring).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    settings, config = read_settings(out)
    dtype = DTYPES[settings["dtype"]]
    if get_method(config.method).adapter is None:  # full fine-tuning saved the whole model
        model = AutoModelForCausalLM.from_pretrained(out, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(out)
        return model.to(device or "cpu").eval(), tokenizer
    base = check_model_dir(model_dir or settings["model"])
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if (out / CONFIG_FILE).is_file():
        load_adapter(out, model)
    elif (out / ADAPTER_FILE).is_file():  # a run written before adapter folders
        load_adapter_file(prepare_model(model, config, copy_model=False), out / ADAPTER_FILE)
    else:
        raise ValueError(f"no adapters in {str(out)!r} (no {CONFIG_FILE})")
    return model.to(device or "cpu").eval(), tokenizer


def cli(argv=None) -> None:
    """``main`` for the command line: bad input and a stopped run end with one clear line instead of a traceback
    (exit status 1; 130 after Ctrl-C, 143 after SIGTERM, as a shell reports a process ended by them)."""
    try:
        main(argv)
    except ValueError as err:
        sys.exit(f"python -m minimal_loramoe.train: error: {err}")
    except TrainingStopped as err:
        print(f"python -m minimal_loramoe.train: {'error' if err.nonfinite else 'stopped'}: {err}", file=sys.stderr)
        sys.exit(1 if err.nonfinite else 130 if "SIGINT" in str(err) else 143 if "SIGTERM" in str(err) else 0)


if __name__ == "__main__":
    cli()
