"""What does the LoRAMoE mixture cost? A CPU benchmark against its floor, one LoRA of rank E*r.

E experts of rank r hold as many parameters as one LoRA of rank E*r (plus a d_in x E router), so one LoRA of rank
E*r is the natural floor for the cost of a LoRAMoE layer (Dou et al., 2024, arXiv 2312.09979). The official code
loops over the experts in Python; ``LoRAMoELinear.forward`` computes all of them in two matmuls. This script
measures, on the CPU:

1. one layer, forward + backward, at LLaMA-like FFN shapes: the frozen base alone, our ``LoRALinear`` and
   Hugging Face PEFT's LoRA at rank E*r, our ``LoRAMoELinear`` (E=8, r=4 and E=6, r=4), and the per-expert loop
   (``LoRAMoELinear.forward_loop``, the official code's shape); plus a few ways of writing the fused forward
   (the "options" rows), to show what each choice buys;
2. peak memory of one training step of each, in a fresh process (see ``peak_memory``);
3. whole-model training throughput (tokens/s) of the book's tiny LLaMA: full fine-tuning, LoRA, LoRAMoE.

Method: ``torch.set_num_threads(threads)``; warm-up runs first; then in every repeat each configuration runs once,
in an order rotated from repeat to repeat, so that load from other processes hits all configurations alike; each
time is reported as a ratio to the LoRA-of-rank-E*r time *of the same repeat*, and the median over the repeats
is what the table shows.

    python benchmarks/bench.py            # full run: about 10 min on an idle 2-core CPU, 30 min on a loaded one;
                                          # writes benchmarks/results/ and the book's plot
    python benchmarks/bench.py --quick    # smoke run: small shapes, 1 thread, about 40 s of CPU time;
                                          # writes nothing unless --out / --plot are given
"""
import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minimal_loramoe import LoRALinear, LoRAMoELinear, add_lora, add_loramoe, model_balance_loss

ROOT = Path(__file__).resolve().parent.parent
ALPHA, DROPOUT = 32, 0.05  # the official training script's settings


@dataclass
class BenchConfig:
    # (name, d_in, d_out, tokens): SmolLM2-135M's FFN up/gate projection at a few thousand tokens (batch 8 x 512),
    # and LLaMA-2-7B's at a small token count (one sequence of 256), which is all 2 CPU cores can do in time.
    shapes: list = field(default_factory=lambda: [("SmolLM2-135M FFN 576->1536", 576, 1536, 8 * 512),
                                                  ("LLaMA-2-7B FFN 4096->11008", 4096, 11008, 256)])
    experts: tuple = ((8, 4), (6, 4))  # (E, r) of the LoRAMoE layers; the first one is what the goals are about
    options: bool = True  # also time the alternative ways of writing the fused forward (first shape only)
    model_batch: tuple = (64, 24)  # tiny LLaMA: batch x tokens
    model_experts: tuple = (6, 4)  # (E, r) of add_loramoe on the tiny LLaMA; LoRA gets rank E*r
    threads: int = 2
    warmup: int = 2
    repeats: int = 9
    min_time: float = 0.15  # seconds; a short step is run several times per measurement to reach this
    memory: str = "all"  # peak memory, one fresh process per configuration: "all", "goal" (tiny LLaMA LoRA and
    # LoRAMoE only: the memory goal) or "none"
    compile: bool = False  # also time torch.compile(LoRAMoELinear) (slow to compile, optional)


QUICK = dict(shapes=[("quick 576->1536", 576, 1536, 512)], experts=((8, 4),), repeats=3, warmup=1, min_time=0.02,
             model_batch=(16, 24), memory="goal", threads=1)
MEMORY_SCOPES = ("all", "goal", "none")


# ----------------------------------------------------------------------------------------------------------------
# The layers under test. Every configuration is a function ``step()`` that runs one forward + backward.

def peft_lora(base: nn.Linear, rank: int) -> nn.Module:
    """Hugging Face PEFT's LoRA layer around ``base`` (its standard injection, on a one-linear holder module)."""
    from peft import LoraConfig, inject_adapter_in_model

    holder = nn.Module()
    holder.proj = base
    config = LoraConfig(r=rank, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=["proj"])
    return inject_adapter_in_model(config, holder).proj


# Alternative ways of writing the fused forward, kept here (not in the package) to show what each choice buys.
# All compute the same function as LoRAMoELinear.forward, except "router+A" (see below).

def fused_naive(self: LoRAMoELinear, x):
    """The first thing one writes: gate copied out to E*r columns, ``scaling`` applied to the d_out-wide output."""
    E, r = self.num_experts, self.rank
    gates = self.gates(x)  # (..., E)
    self.last_gates = gates
    h = F.linear(self.lora_dropout(x), self.lora_A.reshape(E * r, -1))  # (..., E*r)
    h = h * gates.to(h.dtype).repeat_interleave(r, dim=-1)  # (..., E*r): a copy of the gate per column
    B = self.lora_B.permute(1, 0, 2).reshape(-1, E * r)  # (d_out, E*r)
    return self.base(x) + F.linear(h, B) * self.scaling  # one more pass over a (..., d_out) tensor


def fused_scaling_late(self: LoRAMoELinear, x):
    """Like ``forward`` but with ``scaling`` applied after B, on the d_out-wide output."""
    E, r = self.num_experts, self.rank
    gates = self.gates(x)
    self.last_gates = gates
    h = F.linear(self.lora_dropout(x), self.lora_A.reshape(E * r, -1))
    h = (h.unflatten(-1, (E, r)) * gates.to(h.dtype).unsqueeze(-1)).flatten(-2)
    B = self.lora_B.permute(1, 0, 2).reshape(-1, E * r)
    return self.base(x) + F.linear(h, B) * self.scaling


def fused_repeat_interleave(self: LoRAMoELinear, x):
    """Like ``forward`` but the gate is copied out to E*r columns instead of broadcast over an (E, r) view."""
    E, r = self.num_experts, self.rank
    gates = self.gates(x)
    self.last_gates = gates
    h = F.linear(self.lora_dropout(x), self.lora_A.reshape(E * r, -1))
    h = h * (gates * self.scaling).to(h.dtype).repeat_interleave(r, dim=-1)
    B = self.lora_B.permute(1, 0, 2).reshape(-1, E * r)
    return self.base(x) + F.linear(h, B)


def fused_router_with_A(self: LoRAMoELinear, x):
    """Router and all A_i as one (E + E*r, d_in) matmul. Not the same function in training: the router then sees
    the dropped-out input (the official code's router sees the clean input), so it is only an option to time."""
    E, r = self.num_experts, self.rank
    W = torch.cat([self.router.weight, self.lora_A.reshape(E * r, -1)])  # (E + E*r, d_in)
    logits, h = F.linear(self.lora_dropout(x), W).split([E, E * r], dim=-1)
    gates = torch.softmax(logits.float(), dim=-1)
    self.last_gates = gates
    h = (h.unflatten(-1, (E, r)) * (gates * self.scaling).to(h.dtype).unsqueeze(-1)).flatten(-2)
    B = self.lora_B.permute(1, 0, 2).reshape(-1, E * r)
    return self.base(x) + F.linear(h, B)


def fused_addmm(self: LoRAMoELinear, x):
    """Like ``forward`` but the final ``y + h @ B.T`` as one addmm (the add done inside the matmul)."""
    E, r = self.num_experts, self.rank
    gates = self.gates(x)
    self.last_gates = gates
    h = F.linear(self.lora_dropout(x), self.lora_A.reshape(E * r, -1))
    h = (h.unflatten(-1, (E, r)) * (gates * self.scaling).to(h.dtype).unsqueeze(-1)).flatten(-2)
    B = self.lora_B.permute(1, 0, 2).reshape(-1, E * r)
    y = self.base(x)
    return torch.addmm(y.flatten(0, -2), h.flatten(0, -2), B.t()).view_as(y)


OPTIONS = {"fused, naive (repeat_interleave, late scaling)": fused_naive,
           "fused, scaling after B": fused_scaling_late,
           "fused, gate by repeat_interleave": fused_repeat_interleave,
           "fused, router+A one matmul": fused_router_with_A,
           "fused, final add as addmm": fused_addmm}


def layer_configs(d_in, d_out, tokens, cfg: BenchConfig, with_options: bool, with_peft: bool = True, seed=0):
    """``({name: module_or_fn}, {name: name of its reference LoRA}, x)`` for one shape.

    All configurations share one frozen base linear (so they read the same weight memory). ``lora_B`` is set to
    small random values, as after some training (at init it is zero).
    """
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out).requires_grad_(False)
    layers, reference = {"frozen base": base}, {"frozen base": None}
    for E, r in cfg.experts:
        ref = f"LoRA r={E * r}"
        if ref not in layers:
            layers[ref] = LoRALinear(base, rank=E * r, alpha=ALPHA, dropout=DROPOUT)
            reference[ref] = ref
            if with_peft:  # importing peft takes seconds, so a memory process that does not need it skips it
                layers[f"PEFT LoRA r={E * r}"] = peft_lora(base, E * r)
                reference[f"PEFT LoRA r={E * r}"] = ref
        moe = LoRAMoELinear(base, num_experts=E, rank=r, alpha=ALPHA, dropout=DROPOUT)
        nn.init.normal_(moe.lora_B, std=0.02)
        layers[f"LoRAMoE E={E} r={r}"] = moe
        layers[f"per-expert loop E={E} r={r}"] = moe.forward_loop
        reference[f"LoRAMoE E={E} r={r}"] = reference[f"per-expert loop E={E} r={r}"] = ref
        if with_options and (E, r) == tuple(cfg.experts[0]):
            for name, fn in OPTIONS.items():
                layers[f"{name} E={E} r={r}"] = fn.__get__(moe)  # bound to the same layer
                reference[f"{name} E={E} r={r}"] = ref
            if cfg.compile:
                layers[f"torch.compile(LoRAMoE) E={E} r={r}"] = torch.compile(moe)
                reference[f"torch.compile(LoRAMoE) E={E} r={r}"] = ref
    for m in layers.values():
        if isinstance(m, nn.Module):
            m.train()  # dropout on, as in training
    # The input of an FFN linear in the middle of a network requires grad (earlier adapters train), so the
    # backward pass also computes the input gradient through the frozen weight, as it does in a real model.
    x = torch.randn(tokens, d_in, requires_grad=True)
    return layers, reference, x


def layer_step(layer, x):
    """One forward + backward of one layer (adapter gradients reset first, like ``zero_grad(set_to_none=True)``)."""
    owner = getattr(layer, "__self__", layer)  # a bound method (forward_loop, an option) -> its layer
    if isinstance(owner, nn.Module):
        for p in owner.parameters():
            p.grad = None
    x.grad = None
    layer(x).sum().backward()


def fused_matches_loop(E=8, r=4, d_in=64, d_out=96, tokens=50, seed=0) -> float:
    """Max |fused - loop| over outputs and gradients, dropout off, random experts: how exact the fused form is."""
    torch.manual_seed(seed)
    layer = LoRAMoELinear(nn.Linear(d_in, d_out), num_experts=E, rank=r, alpha=ALPHA, dropout=DROPOUT).eval()
    nn.init.normal_(layer.lora_B, std=0.1)
    x = torch.randn(tokens, d_in, requires_grad=True)
    outs = []
    for fn in (layer.forward, layer.forward_loop, *[f.__get__(layer) for f in OPTIONS.values()]):
        for p in layer.parameters():
            p.grad = None
        x.grad = None
        y = fn(x)
        (y * torch.linspace(-1, 1, d_out)).sum().backward()
        outs.append([y.detach(), x.grad, layer.lora_A.grad, layer.lora_B.grad, layer.router.weight.grad])
    return max((a - b).abs().max().item() for other in outs[1:] for a, b in zip(outs[0], other))


# ----------------------------------------------------------------------------------------------------------------
# Timing: interleaved repeats, medians of per-repeat ratios.

def time_interleaved(steps: dict, reference: dict, cfg: BenchConfig, desc: str = "") -> dict:
    """Time every ``steps[name]()``; returns ``{name: {"ms": median ms, "ratio": median ratio, ...}}``.

    ``reference[name]`` names the configuration each one is divided by, repeat by repeat.
    """
    names = list(steps)
    inner = {}
    for name in names:  # warm-up, and how many calls make one measurement of at least min_time
        t0 = time.perf_counter()
        for _ in range(cfg.warmup):
            steps[name]()
        per_call = (time.perf_counter() - t0) / max(cfg.warmup, 1)
        inner[name] = max(1, math.ceil(cfg.min_time / max(per_call, 1e-6)))
    times = {name: [] for name in names}
    for rep in range(cfg.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotate, so no config always runs first
        for name in order:
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                steps[name]()
            times[name].append((time.perf_counter() - t0) / inner[name])
        print(f"\r  {desc} repeat {rep + 1}/{cfg.repeats}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out = {}
    for name in names:
        ref = reference.get(name)
        ratios = [a / b for a, b in zip(times[name], times[ref])] if ref else None
        q = statistics.quantiles(ratios, n=4) if ratios and len(ratios) > 1 else None
        out[name] = {"ms": 1e3 * statistics.median(times[name]), "times_ms": [1e3 * t for t in times[name]],
                     "reference": ref, "ratio": statistics.median(ratios) if ratios else None,
                     "ratio_q25": q[0] if q else None, "ratio_q75": q[2] if q else None,
                     # the fastest repeat of each, a second estimate that load from other processes disturbs least
                     "ratio_best": min(times[name]) / min(times[ref]) if ref else None}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Peak memory. torch has no CPU allocator statistics, and tracemalloc does not see torch's allocations, so each
# configuration runs in a fresh process: one warm-up step, then the kernel's peak-RSS counter (VmHWM) is reset
# (`echo 5 > /proc/self/clear_refs`) and one more step runs; its peak RSS minus the RSS before it is the memory
# the step needed (activations saved for backward, gradients, temporaries). MALLOC_MMAP_THRESHOLD_ makes glibc
# give every allocation over 64 KiB back to the system when freed, so the warm-up step's freed memory is not
# silently reused by the measured step.

def _rss_kib(field_name):
    return int(re.search(rf"{field_name}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def peak_memories(specs: dict, cfg: BenchConfig) -> dict:
    """``{name: peak_memory(spec)}``, two processes at a time (each measures only its own RSS, so they do not
    disturb each other's numbers; most of their time is spent importing torch and transformers)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(specs, pool.map(lambda spec: peak_memory(spec, cfg), specs.values())))


def peak_memory(spec: dict, cfg: BenchConfig) -> float | None:
    """Peak memory (MiB) of one training step of ``spec``, measured in a fresh process; None where not Linux."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(cfg.threads))
    proc = subprocess.run([sys.executable, __file__, "--memory-child", json.dumps(spec)], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {spec} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


def _memory_child(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    if spec["kind"] == "layer":
        cfg = BenchConfig(experts=tuple(tuple(e) for e in spec["experts"]), options=False)
        layers, _, x = layer_configs(spec["d_in"], spec["d_out"], spec["tokens"], cfg, with_options=False,
                                     with_peft=spec["name"].startswith("PEFT"))
        layer = layers[spec["name"]]
        step = lambda: layer_step(layer, x)  # noqa: E731
    else:
        step = model_step_fn(spec["name"], tuple(spec["batch"]), tuple(spec["experts"]))
    step()  # warm-up: lazy allocations (optimizer state, kernels' buffers) happen here
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _rss_kib("VmRSS")
    step()
    print(json.dumps({"peak_mib": (_rss_kib("VmHWM") - before) / 1024}))


# ----------------------------------------------------------------------------------------------------------------
# Whole-model training throughput: the tiny LLaMA of the book.

MODEL_CONFIGS = ("full fine-tuning", "LoRA", "LoRAMoE", "LoRAMoE + balance loss", "LoRAMoE per-expert loop")


def tiny_llama(vocab_size=800):
    from transformers import LlamaConfig, LlamaForCausalLM

    try:
        from minimal_loramoe.lab.model import tiny_llama_config
        config = tiny_llama_config(vocab_size)
    except ImportError:  # the book's config, written out
        config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=4, vocab_size=vocab_size, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def model_step_fn(name: str, batch: tuple, experts: tuple, seed: int = 0):
    """``step()`` = one AdamW training step of the tiny LLaMA with adapter setup ``name`` on a fixed batch."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"name must be one of {MODEL_CONFIGS}, got {name!r}")
    torch.manual_seed(seed)
    model = tiny_llama()
    E, r = experts
    if name == "LoRA":
        add_lora(model, rank=E * r, alpha=ALPHA, dropout=DROPOUT)
    elif name.startswith("LoRAMoE"):
        add_loramoe(model, num_experts=E, rank=r, alpha=ALPHA, dropout=DROPOUT)
        if name == "LoRAMoE per-expert loop":
            for m in model.modules():
                if isinstance(m, LoRAMoELinear):
                    m.forward = m.forward_loop
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    B, T = batch
    ids = torch.randint(3, model.config.vocab_size, (B, T))
    task_types = torch.arange(B) % 2  # half knowledge samples, half task samples

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        if name == "LoRAMoE + balance loss":
            loss = loss + model_balance_loss(model, task_types)
        loss.backward()
        opt.step()
    return step


# ----------------------------------------------------------------------------------------------------------------
# Report.

def run(cfg: BenchConfig, save_partial=None) -> dict:
    """All measurements; ``save_partial(results)`` is called after each section (a long run keeps what it has)."""
    torch.set_num_threads(cfg.threads)
    results = {"config": asdict(cfg), "machine": machine_info(), "fused_vs_loop_max_abs_diff": fused_matches_loop(),
               "layers": [], "model": None}
    for i, (shape_name, d_in, d_out, tokens) in enumerate(cfg.shapes):
        layers, reference, x = layer_configs(d_in, d_out, tokens, cfg, with_options=cfg.options and i == 0)
        steps = {name: (lambda layer=layer: layer_step(layer, x)) for name, layer in layers.items()}
        rows = time_interleaved(steps, reference, cfg, desc=shape_name)
        t_base = rows["frozen base"]["times_ms"]
        for name, row in rows.items():  # the part of the cost that the adapter adds, relative to LoRA's part
            if row["reference"]:
                ref = rows[row["reference"]]["times_ms"]
                row["adapter_ratio"] = statistics.median(
                    (t - b) / (rf - b) for t, b, rf in zip(row["times_ms"], t_base, ref))
        if cfg.memory == "all":  # the options have LoRAMoE's parameters and are only timed
            specs = {name: dict(kind="layer", name=name, d_in=d_in, d_out=d_out, tokens=tokens,
                                experts=cfg.experts, threads=cfg.threads)
                     for name in rows if not name.startswith(("fused", "torch.compile"))}
            for name, peak in peak_memories(specs, cfg).items():
                rows[name]["peak_mib"] = peak
            for row in rows.values():
                ref = row["reference"]
                if row.get("peak_mib") is not None and ref and rows[ref].get("peak_mib"):
                    row["peak_ratio"] = row["peak_mib"] / rows[ref]["peak_mib"]
        results["layers"].append({"shape": shape_name, "d_in": d_in, "d_out": d_out, "tokens": tokens,
                                  "rows": rows})
        if save_partial:
            save_partial(results)
    steps = {name: model_step_fn(name, cfg.model_batch, cfg.model_experts) for name in MODEL_CONFIGS}
    reference = {name: "LoRA" for name in MODEL_CONFIGS}
    rows = time_interleaved(steps, reference, cfg, desc="tiny LLaMA")
    n_tokens = cfg.model_batch[0] * cfg.model_batch[1]
    for name, row in rows.items():
        row["tokens_per_s"] = n_tokens / (row["ms"] / 1e3)
    measured = {"all": MODEL_CONFIGS, "goal": ("LoRA", "LoRAMoE"), "none": ()}[cfg.memory]
    specs = {name: dict(kind="model", name=name, batch=cfg.model_batch, experts=cfg.model_experts,
                        threads=cfg.threads) for name in measured}
    for name, peak in peak_memories(specs, cfg).items():
        rows[name]["peak_mib"] = peak
    for row in rows.values():
        if row.get("peak_mib") is not None and rows["LoRA"].get("peak_mib"):
            row["peak_ratio"] = row["peak_mib"] / rows["LoRA"]["peak_mib"]
    results["model"] = {"batch": cfg.model_batch, "experts": cfg.model_experts, "rows": rows}
    results["goals"] = check_goals(results, cfg)
    return results


def check_goals(results: dict, cfg: BenchConfig) -> dict:
    """The three goals of the benchmark (first shape, first (E, r)); None where not measured."""
    E, r = cfg.experts[0]
    rows = results["layers"][0]["rows"]
    moe, loop = rows[f"LoRAMoE E={E} r={r}"], rows[f"per-expert loop E={E} r={r}"]
    loop_over_moe = statistics.median(a / b for a, b in zip(loop["times_ms"], moe["times_ms"]))
    model = results["model"]["rows"]
    peak = model["LoRAMoE"].get("peak_ratio")
    return {f"LoRAMoE(E={E},r={r}) / LoRA(r={E * r}) time <= 1.15": {"value": moe["ratio"],
                                                                      "met": moe["ratio"] <= 1.15},
            "per-expert loop / LoRAMoE time >= 3": {"value": loop_over_moe, "met": loop_over_moe >= 3},
            "tiny LLaMA LoRAMoE / LoRA peak training memory <= 1.2": {"value": peak,
                                                                     "met": None if peak is None else peak <= 1.2}}


def machine_info() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"model name\s*:\s*(.*)", cpuinfo.read_text()) if cpuinfo.exists() else []
    return {"torch": torch.__version__, "python": platform.python_version(),
            "cpu": names[0] if names else platform.processor(),
            "cpu_count": os.cpu_count(), "loadavg_at_start": load, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                         time.gmtime())}


def fmt(v, spec=".2f"):
    return "–" if v is None else format(v, spec)


def table(results: dict) -> str:
    """The results as a markdown table (one section per shape, then the whole model)."""
    lines = []
    for shape in results["layers"]:
        lines += [f"**{shape['shape']}**, {shape['tokens']} tokens, forward + backward", "",
                  "| configuration | time (ms) | time / LoRA r=E*r | IQR of ratio | best / best "
                  "| added cost / LoRA's | peak memory (MiB) | memory / LoRA |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, row in shape["rows"].items():
            iqr = f"{fmt(row['ratio_q25'])}–{fmt(row['ratio_q75'])}" if row["ratio_q25"] is not None else "–"
            lines.append(f"| {name} | {row['ms']:.1f} | {fmt(row['ratio'])} | {iqr} | {fmt(row['ratio_best'])} | "
                         f"{fmt(row.get('adapter_ratio'))} | {fmt(row.get('peak_mib'), '.1f')} | "
                         f"{fmt(row.get('peak_ratio'))} |")
        lines.append("")
    m = results["model"]
    E, r = m["experts"]
    lines += [f"**tiny LLaMA training step** (batch {m['batch'][0]} x {m['batch'][1]} tokens, AdamW; "
              f"LoRA rank {E * r}, LoRAMoE E={E} r={r})", "",
              "| configuration | time (ms) | tokens/s | time / LoRA | IQR of ratio | best / best | peak memory (MiB) "
              "| memory / LoRA |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in m["rows"].items():
        iqr = f"{fmt(row['ratio_q25'])}–{fmt(row['ratio_q75'])}" if row["ratio_q25"] is not None else "–"
        lines.append(f"| {name} | {row['ms']:.1f} | {row['tokens_per_s']:.0f} | {fmt(row['ratio'])} | {iqr} | "
                     f"{fmt(row['ratio_best'])} | "
                     f"{fmt(row.get('peak_mib'), '.1f')} | {fmt(row.get('peak_ratio'))} |")
    lines += ["", "| goal | measured | met |", "|---|---:|---|"]
    for goal, g in results["goals"].items():
        lines.append(f"| {goal} | {fmt(g['value'])} | {'–' if g['met'] is None else ('yes' if g['met'] else 'no')} |")
    return "\n".join(lines)


def plot(results: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main_rows = lambda rows: {n: r for n, r in rows.items() if r["reference"] and not n.startswith(("fused", "torch"))}  # noqa: E731
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [3, 2, 2]})
    ax = axes[0]
    shapes = results["layers"]
    names = list(main_rows(shapes[0]["rows"]))
    width = 0.8 / len(shapes)
    for j, shape in enumerate(shapes):
        rows = main_rows(shape["rows"])
        ys = [rows[n]["ratio"] if n in rows else float("nan") for n in names]
        bars = ax.barh([i + j * width for i in range(len(names))], ys, height=width, label=shape["shape"])
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_yticks([i + width * (len(shapes) - 1) / 2 for i in range(len(names))], names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(1.15, color="r", lw=0.8, ls="--", label="goal for LoRAMoE: 1.15")
    ax.set_xlabel("forward + backward time / LoRA of rank E*r (median of repeats)")
    ax.set_title("one FFN linear")
    ax.legend(fontsize=7, loc="upper right")

    ax = axes[1]
    rows = results["model"]["rows"]
    speed = [1 / r["ratio"] for r in rows.values()]  # LoRA time / time: throughput relative to LoRA
    bars = ax.barh(list(rows), speed, color="tab:green")
    ax.bar_label(bars, labels=[f"{s:.2f}  ({r['tokens_per_s']:.0f} tok/s)" for s, r in zip(speed, rows.values())],
                 fontsize=7, padding=2)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlim(0, max(speed) * 1.6)
    ax.invert_yaxis()
    ax.set_xlabel("training throughput / LoRA's (median of repeats)")
    ax.set_title("tiny LLaMA, whole training step")
    ax.tick_params(axis="y", labelsize=8)

    ax = axes[2]
    mem = {n: r for n, r in rows.items() if r.get("peak_mib") is not None}
    if mem:
        bars = ax.barh(list(mem), [r["peak_mib"] for r in mem.values()], color="tab:purple")
        ax.bar_label(bars, labels=[f"{r['peak_mib']:.1f} MiB ({fmt(r.get('peak_ratio'))}x)" for r in mem.values()],
                     fontsize=7, padding=2)
        ax.set_xlim(0, max(r["peak_mib"] for r in mem.values()) * 1.5)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("peak memory of one training step (MiB)")
    ax.set_title("tiny LLaMA, memory")
    m = results["machine"]
    fig.suptitle(f"LoRAMoE vs one LoRA of rank E*r on CPU ({results['config']['threads']} threads, torch {m['torch']})",
                 fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats: a smoke test (< 1 min)")
    parser.add_argument("--repeats", type=int, help="timed repeats per configuration (default 9, quick 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default 2; quick: 1, because two OpenMP threads "
                        "on a loaded machine can make small steps many times slower, and quick is only a smoke test)")
    parser.add_argument("--memory", choices=MEMORY_SCOPES, help="which peak memories to measure, each in a fresh "
                        "process (default all; quick: goal = the tiny LLaMA's LoRA and LoRAMoE only)")
    parser.add_argument("--no-options", action="store_true", help="skip the alternative fused forwards")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(LoRAMoELinear)")
    parser.add_argument("--out", help="folder for results.json and results.md "
                                      "(default benchmarks/results; quick: none)")
    parser.add_argument("--plot", help="where to save the plot (default book/images/loramoe_speed.png; quick: none)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        return _memory_child(json.loads(args.memory_child))
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"threads must be >= 1, got {args.threads}")
    cfg = BenchConfig(**(QUICK if args.quick else {}))
    cfg.options, cfg.compile = not args.no_options, args.compile
    if args.threads is not None:
        cfg.threads = args.threads
    if args.memory:
        cfg.memory = args.memory
    if args.repeats is not None:
        if args.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {args.repeats}")
        cfg.repeats = args.repeats
    out = args.out or (None if args.quick else ROOT / "benchmarks" / "results")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
    save_partial = (lambda r: Path(out, "results.partial.json").write_text(json.dumps(r, indent=1))) if out else None
    t0 = time.time()
    results = run(cfg, save_partial)
    results["wall_s"] = time.time() - t0
    results["machine"]["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    text = table(results)
    print(text)
    if out:
        Path(out, "results.partial.json").unlink(missing_ok=True)
        Path(out, "results.json").write_text(json.dumps(results, indent=1))
        Path(out, "results.md").write_text(text + "\n")
    plot_path = args.plot or (None if args.quick else ROOT / "book" / "images" / "loramoe_speed.png")
    if plot_path:
        plot(results, plot_path)
    return results


if __name__ == "__main__":
    main()
