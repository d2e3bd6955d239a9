"""Nothing misleading: no silent random weights, no silent fallback to the embedded Set5, no
artifact whose integrity check was switched off, no search that 'succeeds' with zero trials."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.artifacts import load_artifact, save_artifact
from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


# -- 9. integrity cannot be switched off ------------------------------------------------------

@pytest.mark.parametrize("value", ["DELETE", None, "", 12, "abc"])
def test_artifact_without_a_weights_hash_is_refused(tmp_path: Path, capsys, value) -> None:
    out = save_artifact(tmp_path / "a", create_model("rlfn_tiny_x2"))
    meta = json.loads((out / "artifact.json").read_text())
    if value == "DELETE":
        del meta["weights_sha256"]
    else:
        meta["weights_sha256"] = value
    (out / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(WorkbenchError, match="weights_sha256"):
        load_artifact(out)
    assert main(["prune", "groups", "--model", str(out)]) == 2
    assert "weights_sha256" in _one_line(capsys)


# -- 8. --data-root that does not exist ---------------------------------------------------------

def test_eval_with_a_missing_data_root_fails(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nonexistent"
    assert main(["eval", "--model", "rlfn_tiny_x2", "--data-root", str(missing), "--no-progress"]) == 2
    err = _one_line(capsys)
    assert str(missing) in err and "does not exist" in err
    assert main(["eval", "--model", "rlfn_tiny_x2", "--sets", "Set5", "--data-root", str(missing),
                 "--no-progress"]) == 2
    assert str(missing) in _one_line(capsys)
    # a data root without the named set does not fall back to the embedded copy either
    (tmp_path / "data").mkdir()
    assert main(["eval", "--model", "rlfn_tiny_x2", "--sets", "Set5", "--data-root",
                 str(tmp_path / "data"), "--no-progress"]) == 2
    assert "Set5" in _one_line(capsys)
    # without --data-root the embedded Set5 is still the default
    assert main(["eval", "--model", "rlfn_tiny_x2", "--summary", "--no-progress"]) == 0
