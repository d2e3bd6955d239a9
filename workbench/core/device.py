"""Devices and threads: which torch device a flag or recipe names, and torch's CPU thread count.

One place for both, because every command, stage and measurement resolves a device the same way
('auto' means CUDA when there is one) and refuses a GPU that is not there with one line.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from workbench.core.errors import WorkbenchError

__all__ = ["resolve_device", "num_threads"]


def resolve_device(device: str | torch.device | None, *, local_rank: int | None = None) -> torch.device:
    """'auto' / None -> CUDA when available, else CPU; 'cuda' without a GPU is a WorkbenchError.

    ``local_rank`` (the recipe engine under torchrun: LOCAL_RANK) puts 'auto' and an index-less
    'cuda' on ``cuda:local_rank``, one GPU per process.
    """
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise WorkbenchError(f"device {str(device)[:40]!r}: choose auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(f"device {str(device)!r} requested but no CUDA GPU is available "
                             "(use --device cpu or auto)")
    if dev.type == "cuda" and dev.index is None and local_rank is not None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Temporarily set torch's intra-op thread count (None: leave it); yields the count in use."""
    old = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise WorkbenchError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        if threads is not None:
            torch.set_num_threads(old)
