"""Recipe stage ``evaluate``: scores the previous stage's model with the paper's protocol and
writes the means into that artifact's metrics."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from workbench.stages.registry import StageContext, StageResult, register_stage

log = logging.getLogger("workbench.train")


@dataclass(frozen=True)
class EvaluateConfig:
    sets: list[str] | None = field(default=None, metadata={
        "help": "set names or folders (default: the recipe's data.val.sets)"})
    root: str | None = field(default=None, metadata={
        "help": "folder holding the named sets (default: data.val.root; none: embedded Set5)",
        "exists": "dir"})
    save_images: bool = field(default=False, metadata={"help": "write the SR images into the stage folder"})


@register_stage("evaluate", config=EvaluateConfig,
                help="PSNR/SSIM (Y, scale-pixel crop) and RGB PSNR of the previous stage's model")
def evaluate_stage(cfg: EvaluateConfig, ctx: StageContext) -> StageResult:
    from workbench.models.artifacts import atomic_write_json, update_metrics
    from workbench.measure.evaluate import evaluate, format_table, results_to_json

    val = ctx.recipe.data.val if ctx.recipe is not None else None
    sets = cfg.sets or (list(val.sets) if val is not None else ["Set5"])
    root = cfg.root if cfg.root is not None else (val.root if val is not None else None)
    parent = ctx.load_parent()
    results = evaluate(parent.model, sets, scale=ctx.scale, data_root=root, device=ctx.device,
                       save_dir=ctx.stage_dir / "sr" if cfg.save_images else None, progress=ctx.progress)
    atomic_write_json(ctx.stage_dir / "eval.json", results_to_json(results))
    table = format_table(results, per_image=False)
    log.info("evaluation of %s:\n%s", parent.path or ctx.model_ref, table)
    metrics = {name: {k: float(v) for k, v in res.mean.items()} for name, res in results.items()}
    if parent.path is not None and parent.path.is_dir():
        update_metrics(parent.path, metrics)
    summary = ", ".join(f"{name} PSNR-Y {m['psnr_y']:.3f} dB SSIM-Y {m['ssim_y']:.4f}"
                        for name, m in metrics.items())
    return StageResult(artifact=None, metrics=metrics, summary=summary)


__all__ = ["EvaluateConfig", "evaluate_stage"]
