"""workbench: compression and pruning of efficient super-resolution networks (the RLFN family)."""
__version__ = "0.1.0"
