"""workbench: compression and pruning of efficient super-resolution networks (RLFN, SPAN, DIPNet and
your own, through :func:`register_family`)."""
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
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
