"""minimal LoRAMoE: a from-scratch, readable LoRAMoE (Dou et al., ACL 2024, arXiv 2312.09979) for teaching.

The pieces, one module each:
    lora.py     LoRALinear            one LoRA expert around a frozen linear
    loramoe.py  LoRAMoELinear         E LoRA experts + a router, computed as one fused matmul
    balance.py  localized_balance_loss   the localized balancing constraint (official and corrected)
    config.py   AdapterConfig         every adapter setting and its default, saved with the weights
    inject.py   add_loramoe, save_adapter, load_adapter   plug the layers into a Hugging Face model, save, load
    methods.py  TABLE                 the table of methods (adapter, settings, balancing loss, learning rates)
    sft.py      encode_examples, answer_loss   answer-only SFT batches and loss, for any causal LM
    finetune.py FinetuneConfig, prepare_model, sft_loop   the one SFT loop; train.py is its command
    clusters.py SlidingClusters       SLIM's sliding clusters (weight yielding), part of the LoRAMoE layer
    slim.py     dare_masked, l1_penalty, merge_loramoe   SLIM's model-level additions (arXiv 2410.07739)
"""
from .balance import corrected_localized_balance_loss, localized_balance_loss, model_balance_loss
from .config import FFN_MODULES, TARGET_MODULES, AdapterConfig
from .inject import (add_adapters, add_gated_lora, add_lora, add_loramoe, adapter_layers, count_parameters,
                     load_adapter, load_adapter_file, save_adapter, save_adapter_file)
from .lora import GatedLoRALinear, LoRALinear
from .loramoe import LoRAMoELinear
from .clusters import SlidingClusters
from .slim import dare_masked, l1_penalty, merge_loramoe

__all__ = ["LoRALinear", "GatedLoRALinear", "LoRAMoELinear", "localized_balance_loss",
           "corrected_localized_balance_loss", "model_balance_loss", "add_loramoe", "add_lora", "add_gated_lora",
           "adapter_layers", "count_parameters", "save_adapter_file", "load_adapter_file", "FFN_MODULES",
           "TARGET_MODULES", "AdapterConfig", "add_adapters", "save_adapter", "load_adapter",
           "SlidingClusters", "dare_masked", "l1_penalty", "merge_loramoe"]
__version__ = "0.1.0"
