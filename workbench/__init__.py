"""workbench: compression and pruning of efficient super-resolution networks (RLFN, SPAN, DIPNet and
your own, through :func:`register_family`).

The public API (each name is imported on first use, so ``import workbench`` stays light)::

    import workbench

    art = workbench.load_model("rlfn_s_x4")                 # a name, an artifact folder or a .pth
    workbench.evaluate(art)["Set5"].mean                     # PSNR-Y / SSIM-Y / RGB PSNR
    workbench.profile([art, "rlfn_ntire_x4"])                # latency side by side, ratio to the first
    list(workbench.channel_groups(art.model))                # coupled channel groups
    small = workbench.prune_to_widths(art.model, {"trunk": 46})
    workbench.sensitivity(art, ratios=[0.5]).ranking         # one-shot PSNR drop per group
    from workbench.data.benchmark import load_set
    workbench.plan_cuts(art.model, load_set("Set5", 4), width=16, target_ratio=0.8).widths
    workbench.search_widths(art, {"trunk": "40:48:8"}, trials=4, out_dir="runs/s")["best"]
    workbench.save_artifact("rlfn_s46", small)

``evaluate``, ``profile``, ``sensitivity`` and ``search_widths`` live in :mod:`workbench.api`
(``workbench.search`` is the search's package, so its entry point is named for what it searches).
"""
__version__ = "0.1.0"

# The public API, imported lazily so that ``import workbench`` (and the CLI's start) stays light.
_API = {
    "register_family": ("workbench.models.family", "register_family"),
    "Family": ("workbench.models.family", "Family"),
    "module_family": ("workbench.models.generic", "module_family"),
    "load_model": ("workbench.models.artifacts", "load_model"),
    "save_artifact": ("workbench.models.artifacts", "save_artifact"),
    "channel_groups": ("workbench.prune.groups", "channel_groups"),
    "prune_to_widths": ("workbench.prune.surgery", "prune_to_widths"),
    "plan_cuts": ("workbench.prune.plan", "plan_cuts"),
    "evaluate": ("workbench.api", "evaluate"),
    "profile": ("workbench.api", "profile"),
    "sensitivity": ("workbench.api", "sensitivity"),
    "search_widths": ("workbench.api", "search_widths"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
