"""Small helpers shared by the experiment code: device choice and seeding."""
import random

import numpy as np
import torch


def get_device(device=None) -> torch.device:
    """``device`` if given, else CUDA when a GPU is present (Colab), else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run gives the same numbers when repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
