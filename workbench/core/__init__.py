"""Helpers every layer uses and that use no other workbench module: errors, locks, atomic
writes, output-path checks, progress bars, device resolution."""
