"""The study: Optuna storage, workers that add trials without losing or duplicating any, resume.

Storage: ``sqlite:///<out>/study.db`` by default; any URL Optuna accepts (``postgresql://``,
``mysql://`` for several machines); ``journal:///path/study.log`` for Optuna's journal file
storage (better than SQLite for many processes on one machine or a shared filesystem).

Exact trial counts: a worker *claims* a trial under a file lock beside the storage: it counts the
trials that use up the budget (complete, pruned, failed, running; not the ones abandoned by a killed
worker) and asks for a new trial only while that count is below ``n_trials``. So any number of
workers -- ``--workers N`` processes or N separate ``workbench search`` invocations -- finish with
exactly ``n_trials`` counted trials. (For a database on another machine the lock only covers this
machine; workers on other machines may overshoot by at most one trial each.)

Resume: rerunning the same command continues the study. Trials left RUNNING by a worker that no
longer exists (same host, dead pid) are marked FAIL with the user attribute ``abandoned`` and do not
count, so their slots are run again.
"""
from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from workbench.core.errors import WorkbenchError
from workbench.search.latency import LatencyMeasurer, LatencySettings, cost_key, device_name, software_versions
from workbench.search.objective import FinetuneSettings, ObjectiveConfig
from workbench.search.space import SearchSpace, spec_key, spec_summary

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from workbench.search.objective import CandidateEvaluator

log = logging.getLogger("workbench.search")

SAMPLERS = ("tpe", "nsga2", "random")


@dataclass(frozen=True)
class SearchJob:
    """Everything a study worker needs (picklable: workers are spawned processes)."""

    parent: str                                  # model reference: artifact, .pth or name
    out_dir: str
    n_trials: int
    space: SearchSpace
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    latency: LatencySettings = field(default_factory=LatencySettings)
    storage: str | None = None                   # None: sqlite:///<out_dir>/study.db
    study_name: str = "search"
    eval_set: str = "Set5"
    data_root: str | None = None
    train_data: str | None = None                # HR image folder for the fine-tunes
    train_files: tuple[str, ...] = ()            # or explicit HR files (a recipe's data.train)
    train_lr_files: tuple[str, ...] | None = None  # and their LR files (None: bicubic from HR)
    best_dir: str | None = None                  # where the selected artifact goes (out/best)
    device: str = "cpu"
    seed: int = 0
    sampler: str = "tpe"
    criterion: str = "output"
    keep_candidates: bool = True                 # save every trial's model (the best is exported)
    reference: str | None = None                 # a model to mark on the plot (rlfn_ntire_x4)
    train_threads: int | None = None             # torch threads per worker for training
    enqueue_parent: bool = True                  # first trial: the parent's own widths (a baseline)
    premeasure: int = 0                          # measure the whole space first if it has <= this many configs
    progress: bool = True

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise WorkbenchError(f"--trials must be >= 1, got {self.n_trials}")
        if self.sampler not in SAMPLERS:
            raise WorkbenchError(f"sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}")

    def fingerprint(self) -> dict[str, Any]:
        """What must not change when a stored study is continued."""
        objective = asdict(self.objective)
        if objective.get("latency_ratio") is None:  # studies made before the ratio existed resume
            objective.pop("latency_ratio", None)
        return {"parent": self.parent, "criterion": self.criterion, "space": self.space.to_dict(), "objective": objective,
                "finetune": asdict(self.finetune), "eval_set": self.eval_set,
                "latency": {k: v for k, v in asdict(self.latency).items()
                            if k in ("device", "input_shape", "dtype", "threads", "ntire_folder", "deploy")}}


# -- storage -----------------------------------------------------------------------------------

def storage_url(job: SearchJob) -> str:
    return job.storage or f"sqlite:///{Path(job.out_dir).resolve() / 'study.db'}"


def open_storage(url: str) -> Any:
    """An Optuna storage for ``url`` (``journal:///path`` gives journal file storage)."""
    import optuna

    if url.startswith("journal://"):
        path = Path(url[len("journal://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        # A long busy timeout: several processes write one file.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:
        shown = url
        if "@" in url and "://" in url:  # never print a database password
            scheme, rest = url.split("://", 1)
            shown = f"{scheme}://***@{rest.split('@', 1)[1]}"
        raise WorkbenchError(f"--storage {shown}: Optuna cannot open it ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def claim_lock_path(job: SearchJob) -> Path:
    url = storage_url(job)
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):] + ".claim.lock")
    if url.startswith("journal://"):
        return Path(url[len("journal://"):] + ".claim.lock")
    return Path(job.out_dir) / f"{job.study_name}.claim.lock"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock across processes on this machine (``flock``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def make_sampler(job: SearchJob, worker_index: int) -> Any:
    import optuna

    # Each worker gets its own seed: equal seeds would make workers propose equal trials.
    seed = job.seed * 1000 + worker_index
    if job.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if job.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, job.n_trials // 3)))
    import warnings

    with warnings.catch_warnings():  # multivariate/group are "experimental" but long stable
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, job.n_trials // 3)),
                                          multivariate=True, group=True)


def open_study(job: SearchJob, *, worker_index: int = 0) -> "optuna.Study":
    """Create the study, or load it when it exists (same name in the same storage)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = job.objective.directions
    # Creating a new SQLite file's schema from two processes at once fails; serialise opening.
    with file_lock(claim_lock_path(job).with_suffix(".open.lock")):
        storage = open_storage(storage_url(job))
        study = optuna.create_study(storage=storage, study_name=job.study_name, directions=directions,
                                    sampler=make_sampler(job, worker_index), load_if_exists=True)
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise WorkbenchError(f"study {job.study_name!r} in {storage_url(job)} was created with "
                             f"directions {stored} (another objective); use another --study-name")
    if study.metric_names != job.objective.metric_names:
        import warnings

        with warnings.catch_warnings():   # "experimental" since optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(job.objective.metric_names)   # names in optuna-dashboard
    return study


def _trial_counts(study: "optuna.Study") -> tuple[int, list[Any]]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
               or (t.state == TrialState.FAIL and not t.user_attrs.get("abandoned")
                   and not t.user_attrs.get("skipped_duplicate"))]
    return len(counted), trials


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale_trials(study: "optuna.Study") -> list[int]:
    """Mark trials left RUNNING by a dead worker on this host as FAIL (abandoned); their numbers.

    Call it holding the claim lock: :func:`claim_trial` asks for a trial and records its worker
    under that lock, so a RUNNING trial with no worker recorded was left by a worker that died
    between the two, and is abandoned too.
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker is not None and (worker.get("host") != host or _pid_alive(int(worker.get("pid", -1)))):
            continue
        worker = worker or {}
        study._storage.set_trial_user_attr(t._trial_id, "abandoned", True)
        study._storage.set_trial_user_attr(t._trial_id, "error", f"worker pid {worker.get('pid')} died")
        try:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except Exception:  # another worker recovered it first
            continue
        retry_later(study, t)
        recovered.append(t.number)
    return recovered


def retry_later(study: "optuna.Study", trial: Any) -> None:
    """Queue an abandoned trial's parameters again, so its configuration is still evaluated (the
    abandoned trial does not count towards ``n_trials``; the retry does)."""
    if trial.params:
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number}, skip_if_exists=False)


#: How often a sampler's proposal of an already measured configuration is replaced before the
#: duplicate is accepted (and its stored result reused without training).
MAX_RESAMPLES = 8
#: Spaces up to this many configurations are enumerated to pick an unmeasured one directly.
ENUMERATE_LIMIT = 5000


def _measured_keys(study: "optuna.Study") -> set[str]:
    """Spec keys of the configurations the study has measured or is measuring."""
    from optuna.trial import TrialState

    return {t.user_attrs["spec_key"] for t in study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)) if "spec_key" in t.user_attrs}


def _unmeasured_params(job: SearchJob, parent_spec: Any, seen: set[str]) -> list[dict[str, int]] | None:
    """Parameters of every configuration not yet measured (None: the space is too large to list)."""
    if job.space.size(parent_spec) > ENUMERATE_LIMIT:
        return None
    out = []
    for spec in job.space.all_specs(parent_spec):
        if spec_key(spec) not in seen:
            params = job.space.params_for(spec, parent_spec)
            if params is not None:
                out.append(params)
    return out


def claim_trial(study: "optuna.Study", job: SearchJob, worker_index: int,
                parent_spec: Any = None) -> "optuna.trial.Trial | None":
    """A new trial when the study has fewer than ``n_trials`` counted ones, else None.

    With ``parent_spec`` the trial's configuration is sampled here, under the lock, and a
    configuration the study already measured is not given a trial: TPE repeats itself in small
    discrete spaces (``--trials 4`` once ran the parent three times). The repeat is recorded as a
    FAIL trial with ``skipped_duplicate`` (not counted, so the sampler learns nothing false) and an
    unmeasured configuration is queued instead; only when none is left (or the space is too large
    to list and the sampler keeps repeating) does a trial reuse a stored result.
    """
    import random

    from optuna.trial import TrialState

    with file_lock(claim_lock_path(job)):
        recover_stale_trials(study)
        counted, _ = _trial_counts(study)
        if counted >= job.n_trials:
            return None
        seen = _measured_keys(study) if parent_spec is not None else set()
        for attempt in range(MAX_RESAMPLES + 1):
            trial = study.ask()
            trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(),
                                           "index": worker_index})
            if parent_spec is None:
                return trial
            key = spec_key(job.space.sample(trial, parent_spec))
            if key not in seen or attempt == MAX_RESAMPLES:
                trial.set_user_attr("spec_key", key)
                return trial
            trial.set_user_attr("skipped_duplicate", True)
            trial.set_user_attr("spec_key_proposed", key)
            study.tell(trial, state=TrialState.FAIL)
            unmeasured = _unmeasured_params(job, parent_spec, seen)
            if unmeasured == []:
                log.info("every configuration of the space has been measured; %d trials", counted)
                return None
            if unmeasured:
                pick = random.Random(job.seed * 7919 + trial.number).choice(unmeasured)
                study.enqueue_trial(pick, user_attrs={"instead_of_duplicate": trial.number})
        return None  # pragma: no cover - the loop always returns


# -- preparation: parent figures shared by every worker -------------------------------------------

def ensure_prepared(study: "optuna.Study", job: SearchJob, *, parent_spec: Any, parent_model: Any,
                    evaluator: "CandidateEvaluator", measurer: LatencyMeasurer) -> dict[str, Any]:
    """Measure the parent once per study (PSNR, latency) and store it, with the job's settings, as
    study user attributes; later workers and resumed runs read them back. A resumed study run with a
    different space/objective/fine-tune is refused."""
    with file_lock(claim_lock_path(job).with_suffix(".prepare.lock")):
        attrs = dict(study.user_attrs)
        if "fingerprint" in attrs:
            if attrs["fingerprint"] != _jsonable(job.fingerprint()):
                raise WorkbenchError(
                    f"study {job.study_name!r} in {storage_url(job)} was run with other settings "
                    f"(space/objective/fine-tune/latency); use another --study-name or --out")
            return attrs
        extra = []
        if job.reference:
            from workbench.models.artifacts import load_model

            ref_spec = load_model(job.reference).spec
            extra = [ref_spec] if ref_spec.scale == parent_spec.scale else []
        premeasured = premeasure_space(job, parent_spec, measurer, extra=extra)
        classes = cost_classes(job, parent_spec, measurer) if premeasured else {}
        lat = measurer.latency(parent_spec)
        with measurer.lock.shared():
            psnr = evaluator.psnr(parent_model)
        floor = job.objective.psnr_floor(psnr)
        parent_ms = _value(measurer, lat)
        parent_class = classes.get(cost_key(parent_spec, job.latency.input_shape))
        # a relative budget is a fraction of the parent's latency as the trials are judged: its
        # class latency from the premeasured block when there is one, else its own timing
        budget = job.objective.budget_ms(parent_class["latency_ms"] if parent_class else parent_ms)
        values = {
            "fingerprint": _jsonable(job.fingerprint()), "parent": job.parent,
            "parent_spec": parent_spec.to_dict(), "parent_spec_key": spec_key(parent_spec),
            "parent_psnr_y": psnr, "parent_latency_ms": parent_ms, "psnr_floor": floor,
            "latency_statistic": job.latency.statistic, "premeasured": premeasured,
            "cost_classes": classes, "latency_ratio": job.objective.latency_ratio,
            "latency_budget_ms": budget, "objective": job.objective.objective,
            "device_name": device_name(job.latency.device), "deploy_mode": job.latency.deploy,
            "eval_set": job.eval_set,
            "versions": software_versions(), "created": time.time(),
        }
        if job.reference:
            values.update(_measure_reference(job, evaluator, measurer, parent_spec))
        for key, value in values.items():
            study.set_user_attr(key, value)
        if job.enqueue_parent:
            params = job.space.params_for(parent_spec, parent_spec)
            if params is not None:  # the parent's own widths, fine-tuned like every candidate
                study.enqueue_trial(params, user_attrs={"baseline": "parent widths"})
        return values


def _measure_reference(job: SearchJob, evaluator: Any, measurer: LatencyMeasurer, parent_spec: Any) -> dict[str, Any]:
    from workbench.models.artifacts import load_model

    ref = load_model(job.reference)
    if ref.spec.scale != parent_spec.scale:
        log.warning("reference %s is x%d, the parent x%d: not shown", job.reference, ref.spec.scale,
                    parent_spec.scale)
        return {}
    lat = measurer.latency(ref.spec)
    with measurer.lock.shared():
        psnr = evaluator.psnr(ref.model)
    return {"reference": job.reference, "reference_spec_key": spec_key(ref.spec),
            "reference_spec": ref.spec.to_dict(),
            "reference_psnr_y": psnr, "reference_latency_ms": _value(measurer, lat)}


def _value(measurer: Any, record: dict[str, Any]) -> float:
    return float(measurer.value(record)) if hasattr(measurer, "value") else float(record["median_ms"])


def cost_classes(job: SearchJob, parent_spec: Any, measurer: Any) -> dict[str, dict[str, Any]]:
    """Latency of each cost class of the space (configurations that run the same convolutions,
    :func:`workbench.search.latency.cost_key`): the median over every configuration of the class,
    from the premeasured block (cache hits, nothing is timed again). A class of fifteen
    configurations (RLFN-S, middle 32 in any four of six blocks) is then known from fifteen
    interleaved timings instead of one, and two of its members no longer differ by noise."""
    from workbench.measure.timing import spread

    by_class: dict[str, dict[str, float]] = {}
    for spec in job.space.all_specs(parent_spec):
        value = _value(measurer, measurer.latency(spec))
        by_class.setdefault(cost_key(spec, job.latency.input_shape), {})[spec_key(spec)] = value
    return {k: {"latency_ms": spread(list(v.values()))["median"], "configs": len(v)}
            for k, v in by_class.items()}


def premeasure_space(job: SearchJob, parent_spec: Any, measurer: Any, *, extra: list[Any] = ()) -> int:
    """Measure every configuration of a small space up front (``job.premeasure`` = the most
    configurations to measure; 0 = off), interleaved (see ``LatencyMeasurer.measure_many``): one
    block of measurements before any training, in which a slow spell of a shared machine hits
    every configuration alike, instead of measurements that wait for the workers' fine-tunes.
    Returns how many were new."""
    if not job.premeasure or job.space.size(parent_spec) > job.premeasure:
        return 0
    from workbench.core.progress import tqdm

    specs = job.space.all_specs(parent_spec) + [parent_spec] + list(extra)
    if hasattr(measurer, "measure_many"):
        log.info("timing %d configurations, interleaved", len(specs))
        return int(measurer.measure_many(specs))
    for spec in tqdm(specs, desc="latency of the space", unit="config", disable=not job.progress, leave=False):
        measurer.latency(spec)
    return len(specs)


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


# -- one trial ---------------------------------------------------------------------------------

def _find_duplicate(study: "optuna.Study", key: str, number: int) -> Any:
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != number and t.user_attrs.get("spec_key") == key and "psnr_y" in t.user_attrs:
            return t
    return None


def run_trial(study: "optuna.Study", trial: "optuna.trial.Trial", job: SearchJob, *, parent_spec: Any,
              attrs: dict[str, Any], evaluator: "CandidateEvaluator",
              measurer: LatencyMeasurer) -> dict[str, Any]:
    """Sample, measure, build, fine-tune, score and report one trial; returns its summary."""
    from optuna.trial import TrialState

    t0 = time.perf_counter()
    spec = job.space.sample(trial, parent_spec)
    key = spec_key(spec)
    params, cost = _params_and_cost(spec, job.latency.input_shape)
    trial.set_user_attr("spec_key", key)
    trial.set_user_attr("cost_key", cost)
    trial.set_user_attr("spec", spec.to_dict())
    trial.set_user_attr("summary", spec_summary(spec))
    trial.set_user_attr("params", params)
    trial.set_user_attr("versions", software_versions())

    lat = measurer.latency(spec)
    latency_ms = _value(measurer, lat)
    trial.set_user_attr("latency_ms", latency_ms)
    # The latency the trial is judged by: its cost class's when the space was premeasured (the
    # median over every configuration that runs the same convolutions, see
    # results.pool_equal_cost), so the sampler learns from the same figure the front is drawn with.
    known = (attrs.get("cost_classes") or {}).get(cost)
    judged_ms = float(known["latency_ms"]) if known else latency_ms
    if known:
        trial.set_user_attr("class_latency_ms", judged_ms)
    budget = attrs.get("latency_budget_ms")
    trial.set_user_attr("latency", {k: lat.get(k) for k in ("median_ms", "p90_ms", "min_ms", "device", "deploy", "dtype",
                                                           "threads", "input_shape", "torch",
                                                           "protocol", "cached")})
    trial.set_user_attr("device", lat.get("device"))

    floor = attrs.get("psnr_floor")
    duplicate = _find_duplicate(study, key, trial.number)
    info: dict[str, Any] = {"number": trial.number, "summary": spec_summary(spec), "latency_ms": latency_ms,
                            "cached": bool(lat.get("cached"))}
    if duplicate is not None:
        # Same widths, same seed, same fine-tune: the result would be the same; reuse it.
        psnr = float(duplicate.user_attrs["psnr_y"])
        trial.set_user_attr("duplicate_of", duplicate.number)
        for k in ("psnr_pruned", "finetuned", "candidate"):
            if k in duplicate.user_attrs:
                trial.set_user_attr(k, duplicate.user_attrs[k])
    else:
        skip = job.objective.skip_infeasible and job.objective.over_budget(judged_ms, budget)
        with measurer.lock.shared():
            model = evaluator.build(spec)
            psnr_pruned = float(evaluator.psnr(model))
            finetuned = job.finetune.iterations > 0 and not skip
            ft: dict[str, Any] = {}
            if finetuned:
                ft = evaluator.finetune(model, seed=job.seed)
                psnr = float(evaluator.psnr(model))
            else:
                psnr = psnr_pruned
        trial.set_user_attr("psnr_pruned", psnr_pruned)
        trial.set_user_attr("finetuned", finetuned)
        if ft:
            trial.set_user_attr("finetune", ft)
        if skip:
            trial.set_user_attr("skipped_finetune", "over the latency budget")
        if job.keep_candidates:
            path = _save_candidate(model, job, trial.number, spec, psnr=psnr, latency_ms=latency_ms)
            trial.set_user_attr("candidate", str(path))
    if not math.isfinite(psnr):
        raise WorkbenchError(f"trial {trial.number}: PSNR is {psnr}")
    trial.set_user_attr("psnr_y", psnr)
    constraints = job.objective.constraints(psnr=psnr, latency_ms=judged_ms, psnr_floor=floor,
                                            budget_ms=budget)
    for name, value in constraints.items():
        trial.set_constraint(name, value)
    feasible = all(v <= 0 for v in constraints.values())
    trial.set_user_attr("feasible", feasible)
    trial.set_user_attr("seconds", time.perf_counter() - t0)
    study.tell(trial, job.objective.values(psnr=psnr, latency_ms=judged_ms), state=TrialState.COMPLETE)
    info.update(psnr_y=psnr, feasible=feasible, duplicate=duplicate is not None,
                seconds=time.perf_counter() - t0)
    return info


def _params_and_cost(spec: Any, input_shape: Any) -> tuple[int, str]:
    """The parameter count and the cost key of a spec, from one model built from it."""
    from workbench.measure.profiling import cost_signature
    from workbench.models import build_model

    model = build_model(spec)
    return sum(p.numel() for p in model.parameters()), cost_signature(model, input_shape=tuple(input_shape))


def _save_candidate(model: Any, job: SearchJob, number: int, spec: Any, *, psnr: float,
                    latency_ms: float) -> Path:
    from workbench.models.artifacts import make_lineage, save_artifact

    path = Path(job.out_dir) / "candidates" / f"trial_{number:05d}"
    save_artifact(path, model, metrics={"psnr_y": psnr, "latency_ms": latency_ms,
                                        "eval_set": job.eval_set},
                  lineage=make_lineage(parent=job.parent, seed=job.seed, stage="search",
                                       device=job.device, trial=number, study=job.study_name,
                                       storage=storage_url(job)),
                  config={"spec_key": spec_key(spec), "finetune": asdict(job.finetune)})
    return path


# -- workers -------------------------------------------------------------------------------------

def run_worker(job: SearchJob, *, worker_index: int = 0, workers: int = 1,
               evaluator: "CandidateEvaluator | None" = None,
               measurer: LatencyMeasurer | None = None) -> list[dict[str, Any]]:
    """Claim and run trials of the study until it has ``n_trials``; returns this worker's trials.

    ``evaluator`` defaults to :class:`~workbench.search.objective.DefaultEvaluator` on the parent.
    """
    import torch
    from optuna.trial import TrialState

    from workbench.models.artifacts import load_model

    threads = job.train_threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    torch.set_num_threads(threads)
    parent = load_model(job.parent)
    job.space.validate(parent.spec)
    if evaluator is None:
        from workbench.search.objective import DefaultEvaluator

        evaluator = DefaultEvaluator(parent.model, scale=parent.spec.scale, eval_set=job.eval_set,
                                     data_root=job.data_root, train_data=job.train_data,
                                     train_files=job.train_files, train_lr_files=job.train_lr_files,
                                     finetune=job.finetune, criterion=job.criterion, device=job.device,
                                     importance_cache=str(Path(job.out_dir) / f"importance-{job.criterion}.json"))
    own_measurer = measurer is None
    measurer = measurer or LatencyMeasurer(job.latency)
    study = open_study(job, worker_index=worker_index)
    done: list[dict[str, Any]] = []
    bar = None
    try:
        attrs = ensure_prepared(study, job, parent_spec=parent.spec, parent_model=parent.model,
                                evaluator=evaluator, measurer=measurer)
        if job.progress:
            from workbench.core.progress import tqdm

            bar = tqdm(total=job.n_trials, initial=_trial_counts(study)[0], unit="trial",
                       desc=f"search[{worker_index}]" if workers > 1 else "search",
                       position=worker_index if workers > 1 else None, dynamic_ncols=True)
        while True:
            trial = claim_trial(study, job, worker_index, parent_spec=parent.spec)
            if trial is None:
                break
            try:
                info = run_trial(study, trial, job, parent_spec=parent.spec, attrs=attrs,
                                 evaluator=evaluator, measurer=measurer)
            except KeyboardInterrupt:
                trial.set_user_attr("abandoned", True)
                trial.set_user_attr("error", "interrupted")
                frozen = study.tell(trial, state=TrialState.FAIL)
                retry_later(study, frozen)
                raise
            except Exception as exc:  # one bad candidate must not end the study
                message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                trial.set_user_attr("error", message)
                study.tell(trial, state=TrialState.FAIL)
                info = {"number": trial.number, "error": message}
                log.warning("trial %d failed: %s", trial.number, message)
            done.append(info)
            if bar is not None:
                bar.n = min(job.n_trials, _trial_counts(study)[0])
                bar.set_postfix_str(_describe(info), refresh=True)
    finally:
        if bar is not None:
            bar.close()
        if own_measurer:
            measurer.close()
    return done


def _describe(info: dict[str, Any]) -> str:
    if "error" in info:
        return f"#{info['number']} failed"
    mark = "" if info.get("feasible", True) else " infeasible"
    return (f"#{info['number']} {info['summary']} {info['latency_ms']:.1f} ms "
            f"{info['psnr_y']:.3f} dB{mark}")


def _worker_entry(job: SearchJob, index: int, workers: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    try:
        run_worker(job, worker_index=index, workers=workers)
    except WorkbenchError as exc:
        print(f"workbench search (worker {index}): error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(job: SearchJob, *, workers: int = 1) -> None:
    """Run ``workers`` processes on the study (in this process when 1); wait for all."""
    if workers < 1:
        raise WorkbenchError(f"--workers must be >= 1, got {workers}")
    if workers == 1:
        run_worker(job)
        return
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_entry, args=(job, i, workers), name=f"search-worker-{i}")
             for i in range(workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
        raise
    failed = [i for i, p in enumerate(procs) if p.exitcode not in (0,)]
    if failed:
        raise WorkbenchError(f"search worker(s) {failed} exited with status "
                             f"{[procs[i].exitcode for i in failed]}; the study is kept, rerun to resume")


def check_inputs(job: SearchJob) -> None:
    """Check everything a trial reads, once, before the study starts: thread counts, the parent
    and the space, the validation set, and for fine-tunes the patch size and the training images
    (present, decodable, large enough). A trial that fails on bad input would fail in every trial
    alike; stopping here gives one line instead of a study of failures."""
    from workbench.models.artifacts import load_model
    from workbench.data.benchmark import load_set
    from workbench.data.training import patch_size_problems

    for flag, value in (("--threads", job.latency.threads), ("--train-threads", job.train_threads)):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise WorkbenchError(f"{flag} must be >= 1, got {value}")
    parent = load_model(job.parent)
    job.space.validate(parent.spec)
    scale = parent.spec.scale
    load_set(job.eval_set, scale, data_root=Path(job.data_root) if job.data_root else None)
    if job.finetune.iterations == 0:
        if job.train_data is not None and not Path(job.train_data).is_dir():
            raise WorkbenchError(f"{job.train_data}: training image folder does not exist")
        return
    patch = job.finetune.patch_size
    problems = patch_size_problems(patch, scale, job.parent)
    if problems:
        raise WorkbenchError(f"--patch-size {patch}: {problems[0].split(': ', 1)[1]}")
    from workbench.data.training import PatchDataset, sample_images_dir
    from workbench.search.objective import _large_enough, list_image_files

    lr_files: list[Path] | None = None
    if job.train_files:
        files = [Path(f) for f in job.train_files]
        lr_files = [Path(f) for f in job.train_lr_files] if job.train_lr_files else None
    else:
        files = list_image_files(job.train_data or sample_images_dir())
    for f in files + (lr_files or []):
        _check_decodable(f)
    if not job.train_files:
        files = _large_enough(files, patch)
    # sizes (and LR/HR agreement) from the headers, as the fine-tune's dataset will check them
    PatchDataset(files, scale=scale, patch_size=patch, lr_files=lr_files, cache=False)


def _check_decodable(path: Path) -> None:
    """Raise a one-line WorkbenchError unless ``path`` is an image PIL can read to the end (its
    structure and checksums are verified without decoding the pixels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except UnidentifiedImageError:
        raise WorkbenchError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise WorkbenchError(f"{path}: corrupt image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def run_search(job: SearchJob, *, workers: int = 1, compare_rounds: int = 5) -> dict[str, Any]:
    """Run (or resume) the study with ``workers`` processes, then write the results.

    The inputs are checked first (:func:`check_inputs`); a study in which no trial completed is
    an error (the trials' first error in one line), not a result. Returns the summary (see
    :func:`workbench.search.results.write_results`).
    """
    import warnings

    import optuna
    from optuna.trial import TrialState

    from workbench.search.results import write_results

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    check_inputs(job)
    Path(job.out_dir).mkdir(parents=True, exist_ok=True)
    run_workers(job, workers=workers)
    study = open_study(job)
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        errors = [t.user_attrs.get("error") for t in trials if t.user_attrs.get("error")]
        first = f"; the first error: {str(errors[0])[:300]}" if errors else ""
        raise WorkbenchError(f"search in {job.out_dir}: no trial completed ({len(trials)} failed)"
                             f"{first}")
    with LatencyMeasurer(job.latency) as measurer:
        return write_results(study, job, measurer=measurer if compare_rounds > 0 else None,
                             compare_rounds=compare_rounds)
