"""Progress output in logs: plain periodic lines, never carriage returns or cursor escapes."""
from __future__ import annotations

import io
import os
import subprocess
import sys

from workbench.core.progress import tqdm


def test_plain_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.setenv("WORKBENCH_PROGRESS_INTERVAL", "0")
    log = io.StringIO()
    for _ in tqdm(range(5), desc="work", file=log, mininterval=0, leave=False):
        pass
    with tqdm(total=3, desc="kept", file=log, mininterval=0) as bar:
        for _ in range(3):
            bar.update()
        tqdm.write("a log line", file=log)
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert any(line.startswith("work:") and "5/5" in line for line in lines), text
    kept = [line for line in lines if line.startswith("kept:")]
    assert "a log line" in lines and kept and "3/3" in kept[-1]
    assert len(kept) == len(set(kept))   # the same state is not printed twice


def test_rate_limited_when_not_a_terminal(monkeypatch):
    monkeypatch.setenv("WORKBENCH_PROGRESS_INTERVAL", "3600")
    log = io.StringIO()
    for _ in tqdm(range(1000), desc="quiet", file=log, mininterval=0, leave=True):
        pass
    assert log.getvalue().count("\n") == 1   # only the final line


def test_cli_through_a_pipe_writes_no_carriage_returns(repo_dir):
    env = {**os.environ, "PYTHONPATH": str(repo_dir), "OMP_NUM_THREADS": "1",
           "WORKBENCH_PROGRESS_INTERVAL": "0"}
    proc = subprocess.run([sys.executable, "-m", "workbench", "eval", "--model", "rlfn_tiny_x2",
                           "--summary"], capture_output=True, text=True, env=env, cwd=repo_dir,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr + proc.stdout and "\x1b" not in proc.stderr + proc.stdout
