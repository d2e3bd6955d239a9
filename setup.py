"""Packaging beyond what pyproject.toml can say: the released weights.

The weights live once, in the repository's top-level checkpoints/ (with their licence and NOTICE);
a regular (non-editable) install maps that folder into the package as ``workbench/checkpoints/``,
where :func:`workbench.models.checkpoint_dir` finds them. pyproject.toml cannot list a found set
of packages plus one mapped from another folder, hence this file; everything else is in
pyproject.toml.
"""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["workbench", "workbench.*"]) + ["workbench.checkpoints"],
      package_dir={"workbench.checkpoints": "checkpoints"})
