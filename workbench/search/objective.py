"""What a trial optimises, and how a candidate is made and scored.

Objectives (``ObjectiveConfig.objective``):

- ``pareto``: maximise PSNR and minimise latency together; the study's feasible Pareto front is the
  answer. Optional constraints (a latency budget, a PSNR floor) still apply.
- ``latency``: minimise latency subject to PSNR >= a floor (``psnr_min`` dB, or the parent's PSNR
  minus ``psnr_drop``) -- the NTIRE runtime-track rule.
- ``psnr``: maximise PSNR subject to a latency budget: ``latency_budget_ms``, or
  ``latency_ratio`` (a fraction of the parent's latency measured in the same study, e.g. 0.8 for
  "at least 20% faster than the parent": the form an aim usually takes, and one that holds on any
  machine).

Constraints go through optuna 5's ``trial.set_constraint(name, value)`` (feasible when every value
is <= 0): ``latency_ms`` = latency - budget, ``psnr_db`` = floor - PSNR. A ``latency_ratio`` becomes
a budget in ms once the parent has been timed (:meth:`ObjectiveConfig.budget_ms`).

A candidate is the parent pruned to the sampled spec by channel importance (so it inherits the
parent's weights; fewer blocks keep the first ones), then a short fine-tune, then PSNR (Y channel,
the paper's protocol) on the validation set.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from workbench.core.errors import WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    from workbench.models.rlfn import RLFN, RLFNSpec

OBJECTIVES = ("pareto", "latency", "psnr")


@dataclass(frozen=True)
class ObjectiveConfig:
    """The objective and its constraints (see the module docstring)."""

    objective: str = "pareto"
    latency_budget_ms: float | None = None
    latency_ratio: float | None = None     # budget = this fraction of the parent's latency
    psnr_min: float | None = None          # absolute floor (dB)
    psnr_drop: float | None = None         # floor = parent PSNR - psnr_drop (dB)
    skip_infeasible: bool = True           # no fine-tune for a candidate already over the latency budget

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise WorkbenchError(f"objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.psnr_min is not None and self.psnr_drop is not None:
            raise WorkbenchError("give either a PSNR floor (--psnr-min) or a drop from the parent "
                                 "(--psnr-drop), not both")
        if self.objective == "latency" and self.psnr_min is None and self.psnr_drop is None:
            raise WorkbenchError("objective 'latency' minimises latency under a PSNR floor: give "
                                 "--psnr-min DB or --psnr-drop DB")
        if self.latency_budget_ms is not None and self.latency_ratio is not None:
            raise WorkbenchError("give either a latency budget in ms (--latency-budget) or a fraction "
                                 "of the parent's latency (--latency-ratio), not both")
        if self.objective == "psnr" and self.latency_budget_ms is None and self.latency_ratio is None:
            raise WorkbenchError("objective 'psnr' maximises PSNR under a latency budget: give "
                                 "--latency-budget MS or --latency-ratio R")
        if self.latency_budget_ms is not None and self.latency_budget_ms <= 0:
            raise WorkbenchError(f"latency budget must be > 0 ms, got {self.latency_budget_ms}")
        if self.latency_ratio is not None and not 0 < self.latency_ratio <= 1:
            raise WorkbenchError(f"latency ratio must be in (0, 1] (a fraction of the parent's latency, "
                                 f"e.g. 0.8), got {self.latency_ratio}")
        if self.psnr_drop is not None and self.psnr_drop < 0:
            raise WorkbenchError(f"psnr drop must be >= 0 dB, got {self.psnr_drop}")

    @property
    def directions(self) -> list[str]:
        if self.objective == "pareto":
            return ["maximize", "minimize"]
        return ["minimize"] if self.objective == "latency" else ["maximize"]

    @property
    def metric_names(self) -> list[str]:
        if self.objective == "pareto":
            return ["psnr_y", "latency_ms"]
        return ["latency_ms"] if self.objective == "latency" else ["psnr_y"]

    def psnr_floor(self, parent_psnr: float | None) -> float | None:
        """The PSNR constraint in dB, or None."""
        if self.psnr_min is not None:
            return float(self.psnr_min)
        if self.psnr_drop is not None:
            if parent_psnr is None:
                raise WorkbenchError("--psnr-drop needs the parent's PSNR, which was not measured")
            return float(parent_psnr) - float(self.psnr_drop)
        return None

    def values(self, *, psnr: float, latency_ms: float) -> list[float]:
        """The objective values for optuna, in the order of :attr:`directions`."""
        if self.objective == "pareto":
            return [psnr, latency_ms]
        return [latency_ms] if self.objective == "latency" else [psnr]

    @property
    def has_budget(self) -> bool:
        return self.latency_budget_ms is not None or self.latency_ratio is not None

    def budget_ms(self, parent_latency_ms: float | None) -> float | None:
        """The latency constraint in ms, or None: ``latency_budget_ms``, or ``latency_ratio`` times
        the parent's latency (measured like every candidate, in the same deploy mode)."""
        if self.latency_budget_ms is not None:
            return float(self.latency_budget_ms)
        if self.latency_ratio is not None:
            if parent_latency_ms is None or not parent_latency_ms > 0:
                raise WorkbenchError("--latency-ratio needs the parent's latency, which was not measured")
            return float(self.latency_ratio) * float(parent_latency_ms)
        return None

    def constraints(self, *, psnr: float, latency_ms: float, psnr_floor: float | None,
                    budget_ms: float | None = None) -> dict[str, float]:
        """Constraint values (<= 0 feasible) for ``trial.set_constraint``; ``budget_ms`` is the
        resolved latency budget (:meth:`budget_ms`; default ``latency_budget_ms``)."""
        budget = self.latency_budget_ms if budget_ms is None else budget_ms
        out: dict[str, float] = {}
        if budget is not None:
            out["latency_ms"] = float(latency_ms) - float(budget)
        if psnr_floor is not None:
            out["psnr_db"] = float(psnr_floor) - float(psnr)
        return out

    def over_budget(self, latency_ms: float, budget_ms: float | None = None) -> bool:
        budget = self.latency_budget_ms if budget_ms is None else budget_ms
        return budget is not None and latency_ms > budget


@dataclass(frozen=True)
class FinetuneSettings:
    """The short fine-tune each candidate gets (0 iterations: score the pruned model as is)."""

    iterations: int = 0
    batch_size: int = 16
    patch_size: int = 96          # HR patch side (the LR patch is patch_size / scale)
    lr: float = 1e-4
    loss: str = "l1"
    losses: tuple = ()            # loss specs like a training stage's (overrides ``loss``), e.g.
                                  # ({"type": "distill", "weight": 1.0},)
    teacher: str = "parent"       # the distill teacher: the search's parent or a model REF

    def loss_specs(self) -> list[dict]:
        return [dict(x) for x in self.losses] if self.losses else [{"type": self.loss, "weight": 1.0}]

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise WorkbenchError(f"finetune iterations must be >= 0, got {self.iterations}")
        if self.batch_size < 1 or self.patch_size < 1 or self.lr <= 0:
            raise WorkbenchError("finetune batch size and patch size must be >= 1 and lr > 0")


class CandidateEvaluator(Protocol):
    """Makes and scores candidates. The default one uses the workbench's pruning, training and
    evaluation; tests pass light stand-ins with the same three methods."""

    def build(self, spec: "RLFNSpec") -> "RLFN": ...

    def finetune(self, model: "RLFN", *, seed: int) -> dict[str, Any]: ...

    def psnr(self, model: "RLFN") -> float: ...


def list_image_files(folder: str | Path) -> list[Path]:
    """The training images in ``folder``; a missing or empty folder is a WorkbenchError."""
    from workbench.data.images import require_images

    return require_images(folder, "training images")


def _large_enough(files: list[Path], patch: int) -> list[Path]:
    """The images at least ``patch`` pixels on each side (smaller ones cannot give a patch)."""
    from PIL import Image

    kept = []
    for f in files:
        with Image.open(f) as im:
            if min(im.size) >= patch:
                kept.append(f)
    if not kept:
        raise WorkbenchError(f"{files[0].parent}: no training image is at least {patch}x{patch} "
                             f"(the fine-tune patch size); lower --patch-size")
    return kept


class DefaultEvaluator:
    """Prune by importance (``workbench.prune.surgery.prune_to_spec``), fine-tune with the training
    loop on HR patches (LR made with MATLAB bicubic), score PSNR-Y on the validation set."""

    def __init__(self, parent: "RLFN", *, scale: int, eval_set: str = "Set5",
                 data_root: str | None = None, train_data: str | None = None,
                 train_files: Sequence[str] = (), train_lr_files: Sequence[str] | None = None,
                 finetune: FinetuneSettings = FinetuneSettings(),
                 criterion: str = "output",
                 device: str = "cpu", importance_cache: str | None = None) -> None:
        from workbench.data.benchmark import load_set

        self.parent = parent.eval()
        self.scale = scale
        self.criterion = criterion
        self.settings = finetune
        self.device = device
        self.pset = load_set(eval_set, scale, data_root=Path(data_root) if data_root else None)
        self.train_data = train_data
        self.importance_cache = importance_cache
        self._scores: dict[str, list[float]] | None = None
        self.train_files = [Path(f) for f in train_files]
        self.train_lr_files = [Path(f) for f in train_lr_files] if train_lr_files else None
        self._dataset = None
        self._teacher = None

    def teacher(self) -> Any:
        """The frozen teacher of distill losses: a copy of the parent (freezing the parent itself
        would turn off the autograd tracing that pruning the next candidate needs) or the model
        ``settings.teacher`` names, loaded once."""
        if self._teacher is None:
            if self.settings.teacher in ("parent", "", None):
                import copy

                self._teacher = copy.deepcopy(self.parent).eval()
            else:
                from workbench.models.artifacts import load_model

                self._teacher = load_model(self.settings.teacher).model.eval()
        return self._teacher

    def dataset(self, seed: int) -> Any:
        if self._dataset is None:
            from workbench.data.training import PatchDataset, sample_images_dir

            lr_files = None
            if self.train_files:
                files, lr_files = self.train_files, self.train_lr_files
            else:
                folder = self.train_data or sample_images_dir()
                files = _large_enough(list_image_files(folder), self.settings.patch_size)
            self._dataset = PatchDataset(files, scale=self.scale, patch_size=self.settings.patch_size,
                                         lr_files=lr_files, augment=True,
                                         length=max(len(files), self.settings.batch_size * 8), seed=seed)
        return self._dataset

    def scores(self, names: Sequence[str]) -> dict[str, list[float]]:
        """The parent's channel importance for groups ``names``, each computed once (data-driven
        criteria such as ``output`` take minutes on rlfn_s) and kept in ``importance_cache`` for
        every worker of the study."""
        if self._scores is None or not set(names) <= set(self._scores):
            self._scores = parent_scores(self.parent, criterion=self.criterion, names=names,
                                         cache=Path(self.importance_cache) if self.importance_cache else None)
        return self._scores

    def build(self, spec: "RLFNSpec") -> "RLFN":
        """The parent pruned to ``spec``: fewer blocks keep the first ones, then every group keeps
        its most important channels (ranked once, on the parent)."""
        from workbench.models import group_widths
        from workbench.prune.surgery import drop_blocks, prune_to_widths

        work = self.parent
        if spec.num_blocks < self.parent.spec.num_blocks:
            work = drop_blocks(self.parent, spec.num_blocks)
        current, wanted = group_widths(work.spec), group_widths(spec)
        scores = self.scores([n for n, w in wanted.items() if w < current[n]])
        keep = {}
        for name, width in wanted.items():
            if width < current[name]:
                order = sorted(range(current[name]), key=lambda i: (-scores[name][i], i))
                keep[name] = sorted(order[:width])
        model = prune_to_widths(work, wanted, criterion=self.criterion, keep=keep)
        if model.spec != spec:
            raise WorkbenchError(f"pruned to {model.spec}, not the candidate {spec}")
        return model

    def finetune(self, model: "RLFN", *, seed: int) -> dict[str, Any]:
        from workbench.train.loop import TrainSettings, fit

        from workbench.train.losses import needs_teacher

        s = self.settings
        losses = s.loss_specs()
        settings = TrainSettings(iterations=s.iterations, batch_size=s.batch_size, patch_size=s.patch_size,
                                 lr=s.lr, halve_every=max(1, s.iterations * 10),
                                 losses=losses, checkpoint_every=0, log_every=10)
        teacher = self.teacher() if needs_teacher(losses) else None
        result = fit(model, self.dataset(seed), settings=settings, device=self.device, seed=seed,
                     progress=False, desc="finetune", teacher=teacher)
        model.eval()
        return {k: v for k, v in result.items() if isinstance(v, (int, float, str))}

    def psnr(self, model: "RLFN") -> float:
        from workbench.measure.evaluate import evaluate_set

        model.eval()
        return float(evaluate_set(model, self.pset, device=self.device, progress=False).mean["psnr_y"])


def parent_scores(parent: "RLFN", *, criterion: str, names: Sequence[str] | None = None,
                  cache: Path | None = None) -> dict[str, list[float]]:
    """Importance of every channel of groups ``names`` (default: all) of ``parent`` (higher =
    keep), optionally cached in a JSON file shared by the workers of a study (under a file lock;
    groups already in it are not computed again)."""
    import json

    from workbench.models import group_widths
    from workbench.prune.surgery import group_importance

    widths = group_widths(parent.spec)
    names = list(widths) if names is None else list(names)

    def compute(todo: Sequence[str]) -> dict[str, list[float]]:
        return {name: [float(v) for v in group_importance(parent, name, criterion=criterion)] for name in todo}

    if cache is None:
        return compute(names)
    from workbench.core.files import atomic_write_json
    from workbench.search.study import file_lock

    with file_lock(cache.with_suffix(".lock")):
        scores: dict[str, list[float]] = {}
        if cache.is_file():
            data = json.loads(cache.read_text())
            if data.get("criterion") == criterion:
                scores = {k: v for k, v in data.get("scores", {}).items()
                          if k in widths and len(v) == widths[k]}
        todo = [n for n in names if n not in scores]
        if todo:
            scores.update(compute(todo))
            atomic_write_json(cache, {"criterion": criterion, "scores": scores})
        return scores


def pareto_front(points: Sequence[tuple[Any, float, float]]) -> list[Any]:
    """Items of ``(item, psnr, latency)`` not dominated by another (higher PSNR and lower latency),
    sorted by latency. Ties in both are kept once (the first)."""
    ordered = sorted(points, key=lambda p: (p[2], -p[1]))
    front, best_psnr = [], float("-inf")
    for item, psnr, latency in ordered:
        if psnr > best_psnr:
            front.append(item)
            best_psnr = psnr
    return front
