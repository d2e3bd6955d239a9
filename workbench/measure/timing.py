"""Timing and its statistics: one timer, one interleaved loop, one definition of median/p90.

Every latency workbench reports -- ``workbench profile`` and its sweeps, the search's latency
cache and side-by-side comparisons (:mod:`workbench.search.latency`), sensitivity's per-pair
ratios -- is timed by :class:`Timer` and summarised by :func:`spread`, so a "p90" is the same
number in a sweep CSV, a trial record and a sensitivity row: numpy's ``linear`` percentile of the
repeats (see :func:`spread`).

Only the standard library is imported at module level (numpy and torch when a function runs), so
command-line parsers can read the defaults below without importing torch.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from workbench.core.errors import WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["CLOCKS", "DEFAULT_WARMUP", "DEFAULT_REPEATS", "Timer", "spread", "interleaved_times",
           "round_ratios"]

#: Untimed and timed forward passes of one :func:`workbench.measure.profiling.measure_latency`
#: (and ``workbench profile --warmup/--repeats``). The search times candidates with its own,
#: cheaper protocol: :class:`workbench.search.latency.LatencySettings`.
DEFAULT_WARMUP = 5
DEFAULT_REPEATS = 20


def spread(values: Sequence[float], suffix: str = "") -> dict[str, float]:
    """The one definition of latency statistics in workbench (profile, sweeps, the search's
    cache, sensitivity): median, p10/p25/p75/p90 (``numpy.percentile``'s default ``linear``
    method: the value at rank ``q/100 * (n - 1)`` of the sorted values, interpolated between its
    two neighbours -- so the p90 of 10 repeats lies between the 9th and 10th smallest), the IQR
    (p75 - p25), mean, min and max of ``values``, each key + ``suffix`` (``"_ms"`` for times,
    ``""`` for ratios). Every caller computes its percentiles here, so a
    "p90" means the same thing in a sweep CSV, a trial record and a sensitivity row."""
    import numpy as np

    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise WorkbenchError("no timings to summarise")
    p10, p25, p75, p90 = (float(v) for v in np.percentile(arr, [10, 25, 75, 90]))
    out = {"median": float(np.median(arr)), "p10": p10, "p25": p25, "p75": p75, "p90": p90,
           "iqr": p75 - p25, "mean": float(arr.mean()), "min": float(arr.min()),
           "max": float(arr.max())}
    return {k + suffix: v for k, v in out.items()}


CLOCKS = ("wall", "cpu")


class Timer:
    """Times one call: CUDA events + synchronise on GPU, perf_counter on CPU.

    ``clock="cpu"`` (CPU only) uses the process's CPU time instead of wall time: on a machine
    shared with other busy processes it counts only the time this process actually computed, so
    with ``threads=1`` it stays close to the unloaded latency (with more threads it also counts
    time spent spinning at barriers while a sibling thread is descheduled).
    """

    def __init__(self, device: torch.device, clock: str = "wall") -> None:
        if clock not in CLOCKS:
            raise WorkbenchError(f"clock {clock!r}: choose one of {', '.join(CLOCKS)}")
        if clock == "cpu" and device.type == "cuda":
            raise WorkbenchError("clock 'cpu' measures CPU time; GPU latency uses CUDA events")
        self.cuda = device.type == "cuda"
        self.now = time.perf_counter if clock == "wall" else time.process_time

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            import torch

            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return float(start.elapsed_time(end))
        t0 = self.now()
        fn()
        return (self.now() - t0) * 1e3


def interleaved_times(runners: dict[str, Callable[[], Any]], *, device: str | torch.device = "cpu",
                      rounds: int = 10, warmup: int = 1, clock: str = "wall",
                      progress: bool = False, desc: str = "latency") -> dict[str, list[float]]:
    """Time several forward passes side by side: ``warmup`` untimed calls of each, then
    ``rounds`` rounds that time every runner once, in order (A B C A B C ...).

    A slow spell of a shared machine then hits every runner alike, so the per-round ratios
    (:func:`round_ratios`) hold even when absolute times drift. Returns name -> times in ms.
    """
    import torch

    from workbench.core.device import resolve_device
    from workbench.core.progress import tqdm

    if rounds < 1 or warmup < 0:
        raise WorkbenchError(f"rounds must be >= 1 and warmup >= 0 (got {rounds}, {warmup})")
    dev = resolve_device(device)
    timer = Timer(dev, clock)
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for fn in runners.values():
            for _ in range(warmup):
                fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        with tqdm(total=rounds * len(runners), desc=desc, unit="run", disable=not progress,
                  leave=False) as bar:
            for _ in range(rounds):
                for name, fn in runners.items():
                    times[name].append(timer(fn))
                    bar.update()
    return times


def round_ratios(times: dict[str, list[float]], reference: str) -> dict[str, list[float]]:
    """Per-round latency ratios to ``reference`` (from :func:`interleaved_times`): the ratio of
    two passes timed next to each other, whose spread shows how far the ratio can be trusted."""
    ref = times[reference]
    return {name: [t / r if r > 0 else float("nan") for t, r in zip(ts, ref)]
            for name, ts in times.items()}
