"""Importing this module registers every stage type (each registers itself in its own module)."""
# Each helper module adds one import line here when its stages exist.
