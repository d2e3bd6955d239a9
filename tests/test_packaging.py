"""A regular (non-editable) install carries the released weights: the wheel holds checkpoints/
as workbench/checkpoints/, where the loader looks first."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_the_released_weights(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", str(REPO), "-w", str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("workbench-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (REPO / "checkpoints").iterdir()}
    assert shipped >= {"rlfn_s_x4.pth", "NOTICE", "LICENSE-Apache-2.0.txt"}
    assert {f"workbench/checkpoints/{n}" for n in shipped} <= names
    assert "workbench/data/sets/Set5/HR/baby.png" in names
    assert any(n.startswith("workbench/commands/") for n in names)
