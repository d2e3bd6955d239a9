"""How the search times a candidate: :class:`LatencySettings`, the one source of its defaults.

The ``search`` recipe stage (:class:`workbench.stages.search.SearchStageConfig`) and the
``workbench search`` flags take their latency defaults from here, so the three cannot drift (the
candidates' fine-tune settings are :class:`workbench.search.objective.FinetuneSettings`). Only the
standard library is imported at module level: stage configs import this module without torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workbench.core.errors import WorkbenchError

__all__ = ["LatencySettings", "CACHE_ENV", "DTYPES", "default_cache_path"]

CACHE_ENV = "WORKBENCH_LATENCY_CACHE"
DTYPES = ("float32", "float16", "bfloat16")


def default_cache_path() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "workbench" / "latency.sqlite"


@dataclass(frozen=True)
class LatencySettings:
    """How a latency is measured. Everything that changes the number is part of the cache key."""

    device: str = "cpu"
    input_shape: tuple[int, int, int, int] = (1, 3, 256, 256)   # LR input (N, C, H, W)
    dtype: str = "float32"
    threads: int | None = None          # CPU intra-op threads; None: torch's default (all cores)
    warmup: int = 3
    repeats: int = 10
    ntire_folder: str | None = None     # NTIRE protocol: mean time per full LR image of this folder
    cache_path: str | None = None       # None: default_cache_path()
    isolate: bool = True                # measure in a worker subprocess (False: in this process)
    statistic: str = "median"           # what the search optimises: median (default) or min of the
                                        # repeats (min resists other processes' load on a shared machine)
    deploy: str | None = None           # deploy mode timed (workbench.measure.deploy); None: the device's
                                        # fastest fp32 mode (default_mode), or eager when dtype is not
                                        # float32 (the model cast to dtype, as is)

    def __post_init__(self) -> None:
        from workbench.measure.deploy import MODES, available_modes, default_mode

        if self.dtype not in DTYPES:
            raise WorkbenchError(f"latency dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        mode = self.deploy
        if mode is None:
            mode = default_mode(self.device.split(":")[0]) if self.dtype == "float32" else "eager"
        if mode not in MODES:
            raise WorkbenchError(f"latency deploy mode {mode!r}: choose one of {', '.join(MODES)}")
        if mode not in available_modes(self.device.split(":")[0]):
            raise WorkbenchError(f"latency deploy mode {mode!r} needs a CUDA GPU; modes on "
                                 f"{self.device}: {', '.join(available_modes('cpu'))}")
        if self.dtype != "float32" and mode != "eager":
            raise WorkbenchError(f"latency: deploy mode {mode!r} sets the precision itself; leave "
                                 f"dtype at float32 (or use deploy: eager to time a cast model)")
        object.__setattr__(self, "deploy", mode)
        if self.repeats < 1 or self.warmup < 0:
            raise WorkbenchError("latency: repeats must be >= 1 and warmup >= 0")
        if self.statistic not in ("median", "min"):
            raise WorkbenchError(f"latency statistic {self.statistic!r}: choose median or min")
        if len(self.input_shape) != 4:
            raise WorkbenchError(f"latency input shape {self.input_shape}: expected N,C,H,W")
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))

    def resolved_threads(self) -> int:
        import torch

        return int(self.threads or torch.get_num_threads())

    def cache_file(self) -> Path:
        return Path(self.cache_path).expanduser() if self.cache_path else default_cache_path()

    def protocol(self) -> str:
        if self.ntire_folder:
            folder = Path(self.ntire_folder)
            files = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            return f"ntire:{folder.resolve()}:{len(files)}"
        return "median"
