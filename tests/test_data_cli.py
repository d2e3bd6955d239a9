"""`workbench data make-lr` and `workbench data check` through the CLI entry point."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from workbench.cli import main
from workbench.data.images import read_image, write_image
from workbench.data.imresize import imresize


def test_make_lr_writes_matlab_bicubic(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    hr_dir, out = tmp_path / "hr", tmp_path / "lr"
    a = rng.integers(0, 256, (25, 31, 3), dtype=np.uint8)
    write_image(hr_dir / "a.png", a)
    write_image(hr_dir / "b.png", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    assert main(["data", "make-lr", str(hr_dir), str(out), "--scale", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ax3.png", "bx3.png"]
    np.testing.assert_array_equal(read_image(out / "ax3.png"), imresize(a[:24, :30], 1 / 3))
    assert "wrote 2 LR image(s)" in capsys.readouterr().out
    # A second run keeps what exists; --overwrite redoes it.
    before = (out / "ax3.png").stat().st_mtime_ns
    assert main(["data", "make-lr", str(hr_dir), str(out), "--scale", "3"]) == 0
    assert "wrote 0 LR image(s)" in capsys.readouterr().out and (out / "ax3.png").stat().st_mtime_ns == before
    assert main(["data", "make-lr", str(hr_dir), str(out), "--scale", "3", "--overwrite"]) == 0
    assert "wrote 2" in capsys.readouterr().out


def test_make_lr_errors(tmp_path: Path, capsys) -> None:
    assert main(["data", "make-lr", str(tmp_path / "none"), str(tmp_path / "o"), "--scale", "2"]) == 2
    assert "image folder does not exist" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["data", "make-lr", str(tmp_path), str(tmp_path / "o"), "--scale", "2"]) == 2
    err = capsys.readouterr().err
    assert "bad.png" in err and "Traceback" not in err


def test_check_embedded_and_missing(capsys) -> None:
    assert main(["data", "check", "Set5", "--scale", "4"]) == 0
    out = capsys.readouterr().out
    assert "Set5 x4: 5 image pairs (embedded copy)" in out and "baby" in out and "LR 128x128" in out
    assert main(["data", "check", "NoSuchSet", "--scale", "4"]) == 2
    assert "NoSuchSet: no such data set folder" in capsys.readouterr().err
