"""Importing this module registers every stage type (each registers itself in its own module)."""
from workbench.train import stages as _train_stages  # noqa: F401
from workbench.prune import stages as _prune_stages  # noqa: F401
from workbench.search import stages as _search_stages  # noqa: F401
from workbench import quantize_stage as _quantize_stage  # noqa: F401
