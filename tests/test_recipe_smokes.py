"""Every result recipe runs end to end in its smoke form (shipped sample images, embedded Set5):
the recipes a user reruns as is must not break silently. Slow (a minute or so each)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULT_RECIPES = ["rlfn_s-prune46", "search-rlfn_s", "beat-ntire22", "span-compress"]


@pytest.mark.slow
@pytest.mark.parametrize("name", RESULT_RECIPES)
def test_result_recipe_smoke_run(name: str, tmp_path: Path) -> None:
    run = tmp_path / name
    result = subprocess.run([sys.executable, "-m", "workbench", "run", str(REPO / "recipes" / f"{name}.yaml"),
                             "--smoke", "--run-dir", str(run), "--no-progress"],
                            cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "run finished" in result.stdout + result.stderr
    finals = sorted(run.glob("*/artifact/artifact.json"))
    assert finals, "no stage wrote an artifact"
