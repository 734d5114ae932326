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


def _atomic(path, write) -> None:
    """``write(tmp)`` into a temporary file in ``path``'s folder, then rename it to ``path``: a reader (or a crash)
    sees the old file or the new one, never half of one. The temporary file is removed on any error."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        _umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (``_atomic``)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    _atomic(path, write)


def atomic_save_file(tensors: dict, path, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file`` to ``path`` atomically (``_atomic``)."""
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
