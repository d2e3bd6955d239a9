"""Importing this module registers every stage type (each registers itself in its own module)."""
from workbench.stages import train as _train_stages  # noqa: F401
from workbench.stages import evaluate as _evaluate_stage  # noqa: F401
from workbench.stages import prune as _prune_stages  # noqa: F401
from workbench.stages import search as _search_stages  # noqa: F401
from workbench.stages import quantize as _quantize_stage  # noqa: F401
