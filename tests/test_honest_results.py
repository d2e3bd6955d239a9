"""Nothing misleading: no silent random weights, no silent fallback to the embedded Set5, no
artifact whose integrity check was switched off, no search that 'succeeds' with zero trials."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.models.artifacts import load_artifact, save_artifact
from workbench.cli import main
from workbench.core.errors import WorkbenchError
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


# -- 6. released weights or an explicit random initialisation -----------------------------------

def test_a_name_without_released_weights_is_refused(capsys) -> None:
    from workbench.models.artifacts import load_model

    with pytest.raises(WorkbenchError, match=r"rlfn_s_x3: no released weights at x3.*random:rlfn_s_x3"):
        load_model("rlfn_s_x3")
    assert main(["eval", "--model", "rlfn_s_x3", "--no-progress"]) == 2
    assert "random:rlfn_s_x3" in _one_line(capsys)
    art = load_model("random:rlfn_s_x3")            # asked for explicitly
    assert art.spec.scale == 3 and art.lineage["source"] == "random initialisation"
    assert load_model("rlfn_tiny_x2").lineage["source"] == "random initialisation"  # a test model
    released = load_model("rlfn_s_x4")
    assert released.lineage["source"] == "released checkpoint"


def test_recipe_with_a_name_without_weights_is_invalid(tmp_path: Path, capsys) -> None:
    import yaml

    recipe = {"model": "rlfn_x3", "stages": [{"id": "eval", "stage": "evaluate"}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path)]) == 2
    err = _one_line(capsys)
    assert "model:" in err and "random:rlfn_x3" in err
    recipe["model"] = "random:rlfn_x3"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path)]) == 0


def test_released_weights_missing_from_an_installation_are_an_error(tmp_path: Path, monkeypatch) -> None:
    import workbench.models as models
    from workbench.models.artifacts import load_model

    monkeypatch.setattr(models, "checkpoint_dir", lambda: tmp_path)
    with pytest.raises(WorkbenchError, match="rlfn_s_x4: released weights rlfn_s_x4.pth not found"):
        load_model("rlfn_s_x4")


# -- 7. search: inputs checked before the first trial, failure when no trial completed -------------

SEARCH = ["search", "--model", "rlfn_tiny_x2", "--trials", "2", "--space", "trunk=4:8:4",
          "--input-shape", "1,3,16,16", "--repeats", "1", "--warmup", "0", "--compare-rounds", "0",
          "--threads", "1", "--train-threads", "1", "--no-progress"]


def _search(tmp_path: Path, *extra: str) -> int:
    return main(SEARCH + ["--out", str(tmp_path / "out"), "--latency-cache", str(tmp_path / "lat.sqlite"),
                          *extra])


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "patch7", "patch_small", "threads0",
                                  "train_threads0"])
def test_search_refuses_bad_inputs_before_any_trial(tmp_path: Path, capsys, case: str) -> None:
    from conftest import make_smooth_images

    images = make_smooth_images(tmp_path / "images", n=2, size=40, small=8, seed=0)
    extra = ["--finetune-iters", "1", "--batch-size", "1", "--patch-size", "32", "--train-data", str(images)]
    expect = {"missing": "does not exist", "empty": "no training images", "corrupt": "bad.png",
              "patch7": "patch", "patch_small": "patch", "threads0": "--threads",
              "train_threads0": "--train-threads"}[case]
    if case == "missing":
        extra[-1] = str(tmp_path / "nowhere")
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        extra[-1] = str(tmp_path / "empty")
    elif case == "corrupt":
        (images / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    elif case == "patch7":
        extra[5] = "7"
    elif case == "patch_small":
        extra[5] = "16"            # LR 8x8 at x2: smaller than ESA needs
    elif case == "threads0":
        extra += ["--threads", "0"]
    elif case == "train_threads0":
        extra += ["--train-threads", "0"]
    assert _search(tmp_path, *extra) == 2
    err = _one_line(capsys)
    assert expect in err, err
    assert not (tmp_path / "out" / "study.db").exists()      # refused before any trial


def test_search_where_every_trial_failed_exits_2(tmp_path: Path, capsys, monkeypatch) -> None:
    from workbench.search import objective

    def broken(self, model, *, seed):
        raise RuntimeError("simulated failure inside the fine-tune")

    monkeypatch.setattr(objective.DefaultEvaluator, "finetune", broken)
    images = tmp_path / "images"
    from conftest import make_smooth_images

    make_smooth_images(images, n=2, size=40, small=8, seed=0)
    rc = _search(tmp_path, "--finetune-iters", "1", "--batch-size", "1", "--patch-size", "32",
                 "--train-data", str(images))
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no trial completed" in err[-1] and "simulated failure" in err[-1], err
