"""The laboratory: the book's tiny world and its experiments, built on the method (``minimal_loramoe``).

It imports the method (``from minimal_loramoe import ...``, here ``from .. import ...``); no method module imports
it (``tests/test_floors.py``). Import its rooms by name, e.g. ``from minimal_loramoe.lab import world, reproduce``:

* ``world``: the synthetic world: facts, bios, the downstream tasks and the SFT mixes
* ``tokenizer``: its word-level tokenizer
* ``model``: the tiny LLaMA and loading the shipped checkpoint
* ``pretrain``: pretraining the tiny LLaMA on the world
* ``evaluate``: knowledge and task accuracy on the world
* ``resources``: where the package data lives (checkpoint, world samples, results, run store)
* ``urls``: the repository's addresses (Colab, the published book)
* ``runs``: the run store: one run key, reading and writing runs and their adapters, the one process pool
* ``reproduce``: the forgetting experiment as one command (fixed recipe, growing data)
* ``tune``: the fixed recipe's learning rates (one rule for every method)
* ``fronts``: learning-forgetting fronts over a learning-rate grid
* ``report``: how results are reported: spread, intervals, the one rule for comparing fronts, colours
* ``mechanism``: where an adapter acts and how its router decides, on adapters kept in the run store
* ``anatomy``: statistics and figures of one LoRAMoE layer (chapters 5 and 6)
* ``smollm``: the real model of chapter 10 (SmolLM2-135M): loading, probe, chat format, scoring, SFT mixes
* ``smollm_experiment``: chapter 10's experiment on that model: recipes, grids, results files, figures

The package data these rooms read stays in ``minimal_loramoe/data/`` (``resources``).
"""
