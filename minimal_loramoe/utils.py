"""Small helpers shared by the experiment code: device choice, seeding, files written atomically."""
import os
import random
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file


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


def _umask_mode(path) -> None:
    """Give a file from ``tempfile.mkstemp`` (mode 0600) the mode an ordinary ``open`` would have (0666 - umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: a reader (or a crash)
    sees the old file or the new one, never half of one."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        _umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save_file(tensors: dict, path, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file`` through a temporary file in the same folder and a rename (as above)."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        _umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
