"""bench/gpu_check.py runs on a CPU-only machine as a dry run: every CUDA row is listed and
skipped with its reason, the JSON records it, and the exit status is 0."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script really runs (minutes)")
def test_gpu_check_dry_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--model",
                           "rlfn_tiny_x4", "--json", str(out)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "dry run" in lines[0]
    data = json.loads(out.read_text())
    rows = {r["row"]: r for r in data["rows"]}
    for name in ("eval cuda == cpu", "latency (CUDA events)", "NTIRE protocol", "deploy fp16",
                 "deploy channels_last", "deploy cuda_graph", "train AMP bf16 (20 it)", "int8"):
        assert name in rows and rows[name]["ok"] is None, name
        assert rows[name]["note"].startswith("skipped:")
        assert any(line.startswith(name) and " skip " in line for line in lines)
    assert data["cuda"] is False
