"""Latency a search can trust: measured on the target device, isolated, cached.

Why each part exists:

- **Isolation.** Timings taken while the same machine trains are meaningless. Measurements run in a
  long-lived worker subprocess (``spawn``, one per study process) fed width specs over a pipe, and
  every measurement holds an *exclusive* device lock that training holds *shared*
  (:class:`DeviceLock`): a measurement waits until no search worker on this machine is training,
  and training waits while a measurement runs. A turnstile keeps measurements from starving.
- **The deployed model.** Each candidate is timed as it would be deployed: prepared by
  :func:`workbench.measure.deploy.prepare` in a named mode (``deploy``; default the fastest fp32 mode of
  the device, :func:`workbench.measure.deploy.default_mode`: ``fused`` on CPU, ``cuda_graph`` on GPU),
  because the width/latency staircase of eager PyTorch is not that of the deployed path. In
  ``compile`` mode each candidate is compiled afresh (:func:`workbench.measure.deploy.fresh_compile`), so
  dynamo's recompile limit never silently turns later candidates eager.
- **Statistics.** Warm-up runs, device synchronisation (CUDA events on a GPU), the median and p90 of
  the repeats (``workbench.measure.profiling.measure_latency``; every percentile comes from
  ``workbench.measure.timing.spread``), or the NTIRE protocol over a folder of full images
  (``ntire_latency``).
- **Weights do not matter.** Latency depends on the widths, not the values, so a randomly initialised
  model of the spec is timed; the cache key is the spec (:func:`workbench.search.space.spec_key`:
  RLFN's width key, ``<family>:<spec JSON>`` for every other family). The isolated worker rebuilds
  a spec from its record (:func:`workbench.models.family.spec_from_any_dict`), so a family
  registered only in this process's Python (not by an entry point) is timed with ``isolate=False``.
- **Cache.** One SQLite file per machine (default ``~/.cache/workbench/latency.sqlite``; override with
  ``WORKBENCH_LATENCY_CACHE`` or ``cache_path``), keyed by the exact hardware
  (:func:`workbench.measure.profiling.hardware_key`: CPU vendor, family, model, stepping and a hash of
  its flags; GPU name, driver, CUDA and cuDNN), deploy mode, spec key, input shape, dtype,
  threads, torch version and protocol, shared by every study and process (SQLite's own locking; a
  measurement re-checks the cache after taking the device lock, so two workers never measure the
  same configuration twice). A repeated configuration costs nothing.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import platform
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from workbench.core.errors import WorkbenchError
from workbench.models.family import spec_from_any_dict
from workbench.models.rlfn import RLFNSpec
from workbench.search.settings import CACHE_ENV, DTYPES, LatencySettings, default_cache_path  # noqa: F401
from workbench.search.space import spec_key


def device_name(device: str) -> str:
    """What identifies the hardware a latency belongs to, exactly (the cache key's ``device``):
    see :func:`workbench.measure.profiling.hardware_key`. A CPU model name alone is not enough (two
    different EPYCs both read "AMD EPYC" under KVM)."""
    from workbench.measure.profiling import hardware_key

    return hardware_key(device)


def cost_key(spec: Any, input_shape: Sequence[int] = (1, 3, 256, 256)) -> str:
    """The cost class of a width spec: equal for specs that run the same convolutions
    (:func:`workbench.measure.profiling.cost_signature` of a model built from the spec)."""
    from workbench.measure.profiling import cost_signature
    from workbench.models import build_model

    return cost_signature(build_model(spec), input_shape=tuple(input_shape))


def software_versions() -> dict[str, str]:
    """Versions recorded with every trial (a latency is only comparable under the same software)."""
    import optuna
    import torch

    from workbench import __version__

    return {"workbench": __version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": str(torch.version.cuda) if torch.cuda.is_available() else "none"}


def cache_key_fields(spec: RLFNSpec, settings: LatencySettings, *, device: str | None = None) -> dict[str, Any]:
    import torch

    from workbench.measure.deploy import FORMS_REVISION

    return {"device": device or device_name(settings.device), "spec": spec_key(spec),
            "deploy": f"{settings.deploy}.r{FORMS_REVISION}",
            "input_shape": "x".join(map(str, settings.input_shape)), "dtype": settings.dtype,
            "threads": settings.resolved_threads() if not settings.device.startswith("cuda") else 0,
            "torch": torch.__version__, "protocol": settings.protocol()}


class LatencyCache:
    """Measured latencies in one SQLite file, safe to share between processes and studies."""

    _COLUMNS = ("device", "deploy", "spec", "input_shape", "dtype", "threads", "torch", "protocol")
    #: v2: the exact hardware and the deploy mode are part of the key (v1 rows, keyed by a CPU
    #: model name and timed eager, stay in the file's old table and are not read).
    _TABLE = "latency_v2"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(f"""CREATE TABLE IF NOT EXISTS {self._TABLE} (
                device TEXT, deploy TEXT, spec TEXT, input_shape TEXT, dtype TEXT, threads INTEGER,
                torch TEXT, protocol TEXT, median_ms REAL, p90_ms REAL, record TEXT, measured_at REAL,
                PRIMARY KEY (device, deploy, spec, input_shape, dtype, threads, torch, protocol))""")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=120)
        try:
            with db:
                yield db
        except sqlite3.DatabaseError as exc:
            raise WorkbenchError(f"{self.path}: latency cache cannot be used ({exc}); delete it "
                                 f"or pick another with --latency-cache") from None
        finally:
            db.close()

    def get(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        where = " AND ".join(f"{c} = ?" for c in self._COLUMNS)
        with self._connect() as db:
            row = db.execute(f"SELECT record FROM {self._TABLE} WHERE {where}",
                             [key[c] for c in self._COLUMNS]).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: Mapping[str, Any], record: Mapping[str, Any]) -> None:
        with self._connect() as db:
            db.execute(f"INSERT OR REPLACE INTO {self._TABLE} ({', '.join(self._COLUMNS)}, median_ms, p90_ms, "
                       f"record, measured_at) VALUES ({', '.join('?' * (len(self._COLUMNS) + 4))})",
                       [key[c] for c in self._COLUMNS] + [record.get("median_ms"), record.get("p90_ms"),
                                                          json.dumps(dict(record)), time.time()])

    def __len__(self) -> int:
        with self._connect() as db:
            return int(db.execute(f"SELECT COUNT(*) FROM {self._TABLE}").fetchone()[0])

    def rows(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            cur = db.execute(f"SELECT {', '.join(self._COLUMNS)}, median_ms, p90_ms FROM {self._TABLE}")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]


class DeviceLock:
    """Readers-writer lock across processes (``flock``): training shared, measuring exclusive.

    A writer first takes the turnstile, so readers arriving while it waits queue behind it instead
    of starving it. On systems without ``fcntl`` the lock does nothing.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _flock(self, suffix: str, mode: str) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        with open(str(self.path) + suffix, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX if mode == "ex" else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold while training or evaluating: several holders at once."""
        with self._flock(".turnstile", "ex"):
            pass
        with self._flock(".device", "sh"):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold while measuring: nobody on this machine trains meanwhile."""
        with self._flock(".turnstile", "ex"):
            with self._flock(".device", "ex"):
                yield


# -- the measurement itself (runs in the worker subprocess) -----------------------------------

def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def timed_model(spec: RLFNSpec, settings: LatencySettings, *, fresh: bool = True):
    """A randomly initialised model of ``spec`` as ``settings.deploy`` deploys it.

    Returns ``(model, prepared)``: in ``eager`` mode the bare model cast to ``settings.dtype``
    (``prepared`` False), otherwise a :class:`workbench.measure.deploy.Deployed` that takes float32.
    ``compile`` starts from a clean dynamo state unless ``fresh`` is False (the caller then
    makes room for several compiled models at once).
    """
    import torch

    from workbench.measure.deploy import fresh_compile, prepare
    from workbench.models import build_model

    torch.manual_seed(0)
    model = build_model(spec).eval()
    if settings.deploy == "eager":
        return model.to(device=settings.device, dtype=_dtype(settings.dtype)), False
    if settings.deploy == "compile" and fresh:
        fresh_compile()
    example = None if settings.ntire_folder else settings.input_shape
    return prepare(model, device=settings.device, mode=settings.deploy, example_shape=example,
                   warmup=False), True


def measure_spec(spec: RLFNSpec, settings: LatencySettings) -> dict[str, Any]:
    """Time a randomly initialised model of ``spec`` in this process, as ``settings`` says
    (in its deploy mode; see :func:`timed_model`)."""
    import torch

    from workbench.measure.profiling import measure_latency, ntire_latency

    if not settings.device.startswith("cuda"):
        torch.set_num_threads(settings.resolved_threads())
    t0 = time.perf_counter()
    model, prepared = timed_model(spec, settings)
    prepare_s = time.perf_counter() - t0
    dtype = _dtype(settings.dtype) if not prepared else torch.float32
    if settings.ntire_folder:
        result = dict(ntire_latency(model, settings.ntire_folder, device=settings.device, dtype=dtype,
                                    warmup=settings.warmup, threads=settings.threads,
                                    prepared=True))
    else:
        # compile's first call compiles: one extra untimed pass so warmup=0 still times it compiled
        warmup = settings.warmup + (1 if settings.deploy == "compile" else 0)
        result = dict(measure_latency(model, input_shape=settings.input_shape, device=settings.device,
                                      dtype=dtype, warmup=warmup, repeats=settings.repeats,
                                      threads=settings.threads, prepared=True))
    result["deploy_mode"] = settings.deploy
    result["prepare_s"] = prepare_s
    result["pid"] = os.getpid()  # shows which process measured (the isolated worker)
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool, type(None), list))}


def compare_specs(specs: Mapping[str, RLFNSpec], settings: LatencySettings, *, rounds: int = 5,
                  per_round: int | None = None) -> dict[str, dict[str, Any]]:
    """Side-by-side latency of several specs in their deploy mode: interleaved rounds in one
    process, medians per spec.

    Interleaving means a slow spell of a shared machine hits every model alike, so ratios hold
    even when absolute times do not. Each round times every model ``per_round`` times (default
    ``max(3, repeats // rounds)``, alternating models pass by pass) and keeps that round's median.
    """
    import torch

    from workbench.measure.deploy import fresh_compile
    from workbench.measure.timing import interleaved_times, spread

    if not settings.device.startswith("cuda"):
        torch.set_num_threads(settings.resolved_threads())
    if settings.deploy == "compile":
        fresh_compile(limit=2 * len(specs) + 8)  # every model compiled at once, none eager
    models = {n: timed_model(s, settings, fresh=False) for n, s in specs.items()}
    per_round = per_round or max(3, settings.repeats // max(1, rounds))
    gen = torch.Generator().manual_seed(0)
    x32 = torch.rand(tuple(settings.input_shape), generator=gen) * 255
    inputs = {n: (x32 if prepared else x32.to(dtype=_dtype(settings.dtype))).to(settings.device)
              for n, (_, prepared) in models.items()}
    runners = {n: (lambda m=m, x=inputs[n]: m(x)) for n, (m, _) in models.items()}
    times = interleaved_times(runners, device=settings.device, rounds=rounds * per_round,
                              warmup=max(1, settings.warmup), progress=len(models) >= 4,
                              desc=f"latency of {len(models)} configs, interleaved")
    out = {}
    for name, ts in times.items():
        round_medians = [spread(ts[i:i + per_round])["median"] for i in range(0, len(ts), per_round)]
        out[name] = {**spread(round_medians, "_ms"), "rounds": round_medians,
                     "deploy_mode": settings.deploy}
    return out


def _worker_main(conn, settings_dict: dict[str, Any]) -> None:
    """Body of the latency subprocess: receive (op, payload), reply ("ok", result) or ("error", msg)."""
    settings = LatencySettings(**settings_dict)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        op, payload = message
        try:
            if op == "measure":
                conn.send(("ok", measure_spec(spec_from_any_dict(payload), settings)))
            elif op == "compare":
                specs = {n: spec_from_any_dict(d) for n, d in payload["specs"].items()}
                conn.send(("ok", compare_specs(specs, settings, rounds=payload.get("rounds", 5),
                                               per_round=payload.get("per_round"))))
            else:
                conn.send(("error", f"unknown request {op!r}"))
        except Exception as exc:  # reported to the caller, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


@dataclass
class LatencyMeasurer:
    """Cached, isolated latency of width specs. Use as a context manager (stops the worker).

    ``measured`` counts real measurements and ``hits`` cache hits, so a test (or a log) can tell
    that a repeated configuration cost nothing.
    """

    settings: LatencySettings = field(default_factory=LatencySettings)
    measured: int = 0
    hits: int = 0

    def __post_init__(self) -> None:
        self.cache = LatencyCache(self.settings.cache_file())
        self.lock = DeviceLock(self.settings.cache_file().with_suffix(".lock"))
        self._device = device_name(self.settings.device)
        self._proc = None
        self._conn = None

    # -- worker process ------------------------------------------------------------------------
    def _request(self, op: str, payload: Any) -> Any:
        if not self.settings.isolate:
            if op == "measure":
                return measure_spec(spec_from_any_dict(payload), self.settings)
            specs = {n: spec_from_any_dict(d) for n, d in payload["specs"].items()}
            return compare_specs(specs, self.settings, rounds=payload.get("rounds", 5),
                                 per_round=payload.get("per_round"))
        if self._proc is None or not self._proc.is_alive():
            ctx = mp.get_context("spawn")
            self._conn, child = ctx.Pipe()
            settings = asdict(self.settings)
            settings["threads"] = self.settings.resolved_threads()
            self._proc = ctx.Process(target=_worker_main, args=(child, settings), daemon=True,
                                     name="workbench-latency")
            self._proc.start()
            child.close()
        self._conn.send((op, payload))
        try:
            status, result = self._conn.recv()
        except EOFError:
            self.close()
            raise WorkbenchError("the latency worker process died during a measurement") from None
        if status != "ok":
            raise WorkbenchError(f"latency measurement failed: {result}")
        return result

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send(None)
            self._conn.close()
        if self._proc is not None:
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.terminate()
        self._proc = self._conn = None

    def __enter__(self) -> "LatencyMeasurer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- public ----------------------------------------------------------------------------------
    def key(self, spec: RLFNSpec) -> dict[str, Any]:
        return cache_key_fields(spec, self.settings, device=self._device)

    def latency(self, spec: RLFNSpec) -> dict[str, Any]:
        """Median latency record of ``spec`` (from the cache when this configuration was measured).

        The record holds ``median_ms``, ``p90_ms``, ``cached`` and the cache key fields.
        """
        key = self.key(spec)
        record = self.cache.get(key)
        if record is None:
            with self.lock.exclusive():
                record = self.cache.get(key)      # another worker may have measured it meanwhile
                if record is None:
                    record = self._keyed(dict(self._request("measure", spec.to_dict())), key)
                    self.cache.put(key, record)
                    self.measured += 1
                    return {**record, "cached": False}
        self.hits += 1
        return {**record, "cached": True}

    def _keyed(self, record: dict[str, Any], key: Mapping[str, Any]) -> dict[str, Any]:
        """A fresh measurement with its cache key; ``deploy`` stays the mode's name, the key's
        revisioned form is kept as ``deploy_key``."""
        record.update(key)
        record.update(deploy=self.settings.deploy, deploy_key=key["deploy"], measured_at=time.time())
        return record

    def value(self, record: Mapping[str, Any]) -> float:
        """The number the search uses from a record: its median, or its minimum (``statistic``)."""
        if self.settings.ntire_folder:  # the challenge's number: mean time per full image
            return float(record["mean_ms"])
        key = f"{self.settings.statistic}_ms"
        return float(record.get(key, record["median_ms"]))

    def measure_many(self, specs: list[RLFNSpec], *, fresh: bool = True) -> int:
        """Measure the specs *interleaved*: ``repeats`` rounds, each timing every model once, so
        that a slow spell of a shared machine hits all configurations alike (their order is then
        right even when absolute times drift). Results go to the cache like any other measurement;
        returns how many were measured. The NTIRE protocol is measured one by one (each is a whole
        folder).

        ``fresh`` (the default) measures every spec again, cached or not: the cache outlives the
        load it was measured under (an entry from a busy hour reads 1.7x slower than one from a
        quiet minute), and only one block of one load makes the specs comparable. ``fresh=False``
        measures only the specs the cache lacks."""
        todo: dict[str, RLFNSpec] = {}
        for spec in specs:
            if fresh or self.cache.get(self.key(spec)) is None:
                todo.setdefault(spec_key(spec), spec)
        if not todo:
            return 0
        from workbench.measure.timing import spread

        if self.settings.ntire_folder:
            for spec in todo.values():
                self.latency(spec)
            return len(todo)
        with self.lock.exclusive():
            if not fresh:
                todo = {k: s for k, s in todo.items() if self.cache.get(self.key(s)) is None}
            result = self._request("compare", {"specs": {k: s.to_dict() for k, s in todo.items()},
                                               "rounds": self.settings.repeats, "per_round": 1})
            for k, spec in todo.items():
                times, key = result[k]["rounds"], self.key(spec)
                record = self._keyed({**spread(times, "_ms"), "repeats": len(times),
                                      "deploy_mode": self.settings.deploy,
                                      "warmup": self.settings.warmup, "interleaved_with": len(todo)}, key)
                self.cache.put(key, record)
                self.measured += 1
        return len(todo)

    def compare(self, specs: Mapping[str, RLFNSpec], *, rounds: int = 5) -> dict[str, dict[str, Any]]:
        """Fresh side-by-side measurement (not cached) of several specs; see :func:`compare_specs`."""
        with self.lock.exclusive():
            return self._request("compare", {"specs": {n: s.to_dict() for n, s in specs.items()},
                                             "rounds": rounds})
