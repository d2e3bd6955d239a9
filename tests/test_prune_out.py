"""`prune apply --out` replaces an existing artifact, but never a folder or file that is not one
(unless --force), and leaves no hidden leftovers."""
from __future__ import annotations

from pathlib import Path

import pytest

from workbench.models.artifacts import load_artifact
from workbench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["prune", "apply", "--model", "rlfn_tiny_x2", "--widths", "trunk=6"]


def test_existing_folder_or_file_is_refused_unless_force(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    assert main(ARGS + ["--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a workbench artifact" in err and "--force" in err
    assert (folder / "holiday.jpg").read_bytes() == b"precious"

    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    assert main(ARGS + ["--out", str(file)]) == 2
    assert file.read_text() == "keep me"

    assert main(ARGS + ["--out", str(file), "--force"]) == 0
    assert load_artifact(file).spec.trunk == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]  # no .NAME.old-PID


def test_existing_artifact_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    assert main(ARGS + ["--out", str(out)]) == 0
    assert main(ARGS[:-1] + ["trunk=5", "--out", str(out)]) == 0
    assert load_artifact(out).spec.trunk == 5
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]
