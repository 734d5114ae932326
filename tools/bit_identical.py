"""One short training run per method through the public API, written to a JSON file, so two checkouts (before and
after a refactor) can be compared exactly: ``python tools/bit_identical.py OUT.json [ROWS]`` in each, then
``python tools/bit_identical.py --compare A.json B.json``. Run it with ``PYTHONPATH=<checkout>``: the script's own
folder, not the current one, is first on ``sys.path``, so an installed copy of the package would win otherwise."""
import json
import sys

import torch


def reproduce_module():
    try:
        from minimal_loramoe.lab import reproduce
    except ImportError:
        from minimal_loramoe import reproduce
    return reproduce


def record(rows: int = 128) -> dict:
    torch.set_num_threads(1)
    reproduce = reproduce_module()
    from minimal_loramoe.finetune import FinetuneConfig, finetune
    model_mod = __import__(reproduce.load_pretrained.__module__, fromlist=["x"])
    world_mod = __import__(reproduce.sft_dataset.__module__, fromlist=["x"])
    out = {"module": reproduce.__name__, "file": reproduce.__file__}
    base, tok, world = model_mod.load_pretrained(reproduce.DEFAULT_CHECKPOINT, device="cpu")
    data = world_mod.sft_dataset(world, rows, knowledge_fraction=0.2, seed=0)
    for method, lr in (("full_ft", 2e-5), ("lora", 1e-3), ("loramoe", 1e-3)):
        evals = reproduce.one_run(method=method, lr=lr, seed=0, sizes=[rows // 2, rows], n_per_task=20, device="cpu")
        for e in evals.values():
            e.pop("seconds", None)
        _, hist = finetune(base, tok, data, FinetuneConfig(method=method, lr=lr, seed=0), device="cpu",
                           progress=False)
        out[method] = {"evals": {str(k): v for k, v in evals.items()},
                       "loss": [float(x) for x in hist["loss"]], "lbc": [float(x) for x in hist["lbc"]]}
        print(method, "final loss", out[method]["loss"][-1], "knowledge", evals[rows]["knowledge"], flush=True)
    return out


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        a, b = (json.load(open(p)) for p in sys.argv[2:4])
        for m in ("full_ft", "lora", "loramoe"):
            same = a[m] == b[m]
            print(f"{m:<8} losses {len(a[m]['loss'])} steps, evals {list(a[m]['evals'])}: "
                  f"{'bit-identical' if same else 'DIFFERENT'}")
        print(f"before: {a['module']} ({a.get('file')})\nafter:  {b['module']} ({b.get('file')})")
        sys.exit(0 if all(a[m] == b[m] for m in ("full_ft", "lora", "loramoe")) else 1)
    json.dump(record(int(sys.argv[2]) if len(sys.argv) > 2 else 128), open(sys.argv[1], "w"), indent=1)
