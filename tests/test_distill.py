"""Knowledge distillation: the `distill` loss, a frozen teacher, resume with a teacher, LR-only
training images, and the teacher in a stage's lineage."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_smooth_images
from test_train_loop import StopAt, ToyPatches, _model, _settings
from workbench.models.artifacts import load_artifact, state_digest
from workbench.data.training import PatchDataset
from workbench.core.errors import WorkbenchError
from workbench.recipes.engine import run_recipe
from workbench.recipes.loader import load_recipe
from workbench.train.losses import build_loss, check_loss_specs, needs_teacher, uses_hr
from workbench.train.loop import CHECKPOINT_FILE, fit, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

DISTILL = [{"type": "distill", "weight": 1.0}]


def _teacher():
    torch.manual_seed(7)
    from workbench.models import create_model

    return create_model("rlfn_tiny_x2").eval()


def test_loss_is_zero_when_the_student_is_the_teacher() -> None:
    teacher = _teacher()
    student = copy.deepcopy(teacher)
    lr = torch.rand(2, 3, 16, 16) * 255
    for norm in ("l1", "l2"):
        loss = build_loss([{"type": "distill", "norm": norm}], teacher=teacher)
        assert float(loss(student(lr), torch.empty(2, 3, 0, 0), lr).detach()) == 0.0
    other = _model()  # another init: the loss sees the difference
    loss = build_loss(DISTILL, teacher=teacher)
    value = loss(other(lr), torch.empty(2, 3, 0, 0), lr)
    with torch.no_grad():
        expected = (other(lr) - teacher(lr)).abs().mean()
    assert float(value) == pytest.approx(float(expected), rel=1e-6) and float(value) > 0


def test_a_unit_range_teacher_sees_the_batch_through_its_input_range() -> None:
    # SPAN works on [0, 1]: the training loop feeds the student through run_model, and the teacher
    # must get the same view, else the loss compares against the SR of a 255x brighter input.
    from workbench.models.family import run_model
    from workbench.models import SPABSpec, SPANSpec, build_model

    torch.manual_seed(3)
    teacher = build_model(SPANSpec(scale=2, feature=8, blocks=(SPABSpec(6, 5),), tail=5, fuse=6)).eval()
    lr = torch.rand(2, 3, 12, 12) * 255
    loss = build_loss(DISTILL, teacher=teacher)
    with torch.no_grad():
        assert float(loss(run_model(copy.deepcopy(teacher), lr), torch.empty(2, 3, 0, 0), lr)) == 0.0


def test_self_ensemble_target_is_the_mean_over_flips_and_transposes() -> None:
    teacher = _teacher()
    lr = torch.rand(2, 3, 32, 28) * 255  # not square: the transposes must come back to 28 x 32
    with torch.no_grad():
        views = [teacher(lr), teacher(lr.flip(-1)).flip(-1), teacher(lr.flip(-2)).flip(-2),
                 teacher(lr.flip(-1).flip(-2)).flip(-2).flip(-1)]
        t = [teacher(lr.transpose(-1, -2)).transpose(-1, -2),
             teacher(lr.flip(-1).transpose(-1, -2)).transpose(-1, -2).flip(-1),
             teacher(lr.flip(-2).transpose(-1, -2)).transpose(-1, -2).flip(-2),
             teacher(lr.flip(-1).flip(-2).transpose(-1, -2)).transpose(-1, -2).flip(-2).flip(-1)]
    for n, expected in ((1, views[0]), (2, sum(views[:2]) / 2), (4, sum(views) / 4),
                        (8, (sum(views) + sum(t)) / 8)):
        target = build_loss([{"type": "distill", "ensemble": n}], teacher=teacher).terms[0].target(lr)
        assert target.shape == (2, 3, 64, 56)
        assert torch.allclose(target, expected, atol=1e-3), n
    # a random teacher is not flip-equivariant: the ensemble is a different target
    one = build_loss(DISTILL, teacher=teacher).terms[0].target(lr)
    eight = build_loss([{"type": "distill", "ensemble": 8}], teacher=teacher).terms[0].target(lr)
    assert (one - eight).abs().max() > 0.1
    assert check_loss_specs([{"type": "distill", "ensemble": 3}])  # only 1, 2, 4, 8
    assert not check_loss_specs([{"type": "distill", "ensemble": 8}])


def test_loss_specs_need_a_teacher_and_are_checked() -> None:
    assert needs_teacher(DISTILL) and not needs_teacher([{"type": "l1"}])
    assert not uses_hr(DISTILL) and uses_hr([{"type": "l1"}, *DISTILL])
    assert check_loss_specs([{"type": "distill", "norm": "l3"}])      # a wrong norm is reported
    assert check_loss_specs([{"type": "distill", "teacher": "rlfn_x4"}])  # the teacher is a stage field
    with pytest.raises(WorkbenchError, match="needs a teacher"):
        build_loss(DISTILL)


def test_teacher_stays_frozen_and_the_student_moves_towards_it() -> None:
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _model()
    lr = ToyPatches()[0][0][None]
    with torch.no_grad():
        gap0 = float((student(lr) - teacher(lr)).abs().mean())
    fit(student, ToyPatches(), settings=_settings(iterations=30, losses=DISTILL, lr=2e-3), device="cpu",
        seed=1, progress=False, teacher=teacher)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        gap1 = float((student(lr) - teacher(lr)).abs().mean())
    assert gap1 < 0.7 * gap0, (gap0, gap1)


def test_resume_with_a_teacher_is_bitwise_and_a_changed_teacher_is_refused(tmp_path: Path) -> None:
    teacher = _teacher()
    settings = _settings(losses=[{"type": "l1", "weight": 1.0}, {"type": "distill", "weight": 0.5}],
                         teacher=state_digest(teacher))
    ref = _model()
    fit(ref, ToyPatches(), settings=settings, device="cpu", seed=5, progress=False, teacher=teacher)
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, ToyPatches(), settings=settings, device="cpu", seed=5, checkpoint_dir=tmp_path,
            callbacks=[StopAt(5)], progress=False, teacher=teacher)
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["iteration"] == 3
    model = _model()
    metrics = fit(model, ToyPatches(), settings=settings, device="cpu", seed=5, checkpoint_dir=tmp_path,
                  progress=False, teacher=teacher)
    assert metrics["resumed_from"] == 3
    for (name, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    other = _model()
    with pytest.raises(WorkbenchError, match="other settings"):
        fit(_model(), ToyPatches(), settings=_settings(losses=settings.losses, teacher=state_digest(other)),
            device="cpu", seed=5, checkpoint_dir=tmp_path, progress=False, teacher=other)


def test_lr_only_images_train_against_the_teacher(tmp_path: Path) -> None:
    folder = make_smooth_images(tmp_path / "lr", n=3, size=20, small=5, seed=4)
    files = sorted(folder.iterdir())
    data = PatchDataset(files, scale=2, patch_size=32, lr_only=[True] * 3, targets=False, seed=0,
                        augment=False)
    lr, hr = data[0]
    assert lr.shape == (3, 16, 16) and hr.numel() == 0
    # the LR patch is a crop of the 20x20 file itself, not of a half-size downscaled copy
    from workbench.data.images import read_image

    image = torch.from_numpy(read_image(files[0]).copy()).permute(2, 0, 1).float()
    windows = image.unfold(1, 16, 1).unfold(2, 16, 1).permute(1, 2, 0, 3, 4)   # 5 x 5 x 3 x 16 x 16
    assert any(torch.equal(w, lr) for row in windows for w in row)
    with pytest.raises(WorkbenchError, match="no HR target"):
        PatchDataset(files, scale=2, patch_size=32, lr_only=[True] * 3, targets=True)
    teacher = _teacher()
    student = _model()
    fit(student, data, settings=_settings(iterations=4, batch_size=2, losses=DISTILL), device="cpu",
        seed=0, progress=False, teacher=teacher)


def test_lr_only_images_shrunk_by_their_factor_before_cropping(tmp_path: Path) -> None:
    """``lr_only=2``: the LR input is the MATLAB-bicubic half-size copy of the file, cropped."""
    from workbench.data.imresize import downscale
    from workbench.data.images import read_image

    folder = make_smooth_images(tmp_path / "photos", n=2, size=41, small=5, seed=6)
    files = sorted(folder.iterdir())
    data = PatchDataset(files, scale=2, patch_size=32, lr_only=[2, 2], targets=False, seed=0,
                        augment=False)
    lr, _ = data[0]
    half = torch.from_numpy(downscale(read_image(files[0])[:40, :40], 2).copy()).permute(2, 0, 1).float()
    assert half.shape[-2:] == (20, 20) and lr.shape == (3, 16, 16)
    windows = half.unfold(1, 16, 1).unfold(2, 16, 1).permute(1, 2, 0, 3, 4)
    assert any(torch.equal(w, lr) for row in windows for w in row)
    # a 41 px image shrunk by 3 holds 13 px, not the 16 px LR patch: refused before decoding
    with pytest.raises(WorkbenchError, match="shrunk by 3"):
        PatchDataset(files, scale=2, patch_size=32, lr_only=[3, 3], targets=False)


def _recipe(tmp_path: Path, stages: list[dict], train: list[dict] | None = None) -> Path:
    images = make_smooth_images(tmp_path / "images", n=4, size=48, small=6, seed=0, prefix="img")
    recipe = {"model": "rlfn_tiny_x2", "seed": 3, "device": "cpu",
              "data": {"train": train or [{"root": str(images), "layout": "folder"}]},
              "stages": stages}
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_stages_distil_from_their_parent_and_record_the_teacher(tmp_path: Path) -> None:
    common = {"batch_size": 2, "patch_size": 32, "checkpoint_every": 2, "log_every": 1, "val": False}
    path = _recipe(tmp_path, [
        {"id": "warm", "stage": "warm_start", "iterations": 2, **common},
        {"id": "kd", "stage": "finetune", "iterations": 3, **common,
         "losses": [{"type": "l2", "weight": 1.0}, {"type": "distill", "weight": 1.0, "norm": "l1"}]},
        {"id": "sfp", "stage": "sfp", "iterations": 2, "mask_every": 2, "criterion": "l1",
         "targets": {"trunk.2": 6}, **common, "losses": DISTILL, "teacher": "rlfn_tiny_x2"},
    ])
    run = tmp_path / "run"
    run_recipe(load_recipe(path), run_dir=run, progress=False)
    warm = load_artifact(run / "00-warm" / "artifact")
    kd = load_artifact(run / "01-kd" / "artifact")
    assert kd.lineage["teacher"] == str(run / "00-warm" / "artifact")
    assert kd.lineage["teacher_weights_sha256"] == warm.weights_sha256
    assert "teacher" not in warm.lineage
    import json

    curve = json.loads((run / "01-kd" / "curve.json").read_text())
    assert [i for i, _ in curve["loss"]] == [1, 2, 3] and curve["val"] == []   # val: False
    assert (run / "01-kd" / "curve.png").is_file() and (run / "02-sfp" / "curve.png").is_file()
    sfp = load_artifact(run / "02-sfp" / "artifact")
    assert sfp.lineage["teacher"] == "rlfn_tiny_x2" and len(sfp.lineage["teacher_weights_sha256"]) == 64


def test_hr_losses_on_lr_only_sources_are_refused_by_the_loader(tmp_path: Path) -> None:
    common = {"batch_size": 2, "patch_size": 32, "val": False}
    images = make_smooth_images(tmp_path / "lr", n=2, size=24, small=6, seed=1)
    path = _recipe(tmp_path, [{"id": "ft", "stage": "finetune", "iterations": 2, **common}],
                   train=[{"root": str(images), "layout": "folder", "as_lr": True}])
    with pytest.raises(WorkbenchError, match="as_lr"):
        load_recipe(path)
    path = _recipe(tmp_path, [{"id": "ft", "stage": "finetune", "iterations": 2, **common, "losses": DISTILL}],
                   train=[{"root": str(images), "layout": "folder", "as_lr": True}])
    run_recipe(load_recipe(path), run_dir=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "00-ft" / "artifact" / "artifact.json").is_file()
    # downscale belongs to as_lr sources (a paired source's LR is HR / scale)
    path = _recipe(tmp_path, [{"id": "ft", "stage": "finetune", "iterations": 2, **common, "losses": DISTILL}],
                   train=[{"root": str(images), "layout": "folder", "downscale": 2}])
    with pytest.raises(WorkbenchError, match="downscale: only with as_lr"):
        load_recipe(path)


def test_search_candidates_distil_from_the_parent_without_freezing_it(tmp_path: Path) -> None:
    """Candidates are fine-tuned against the parent's SR; the parent must stay prunable (its
    parameters keep requires_grad, which the dependency graph's tracing needs)."""
    from workbench.search.objective import DefaultEvaluator, FinetuneSettings

    images = make_smooth_images(tmp_path / "train", n=3, size=48, small=6, seed=2)
    parent = _teacher()
    evaluator = DefaultEvaluator(parent, scale=2, train_data=str(images), criterion="l1",
                                 finetune=FinetuneSettings(iterations=2, batch_size=2, patch_size=32,
                                                           loss="distill"))
    first = evaluator.build(parent.spec.with_widths({"block1.mid1": 6}))
    evaluator.finetune(first, seed=0)
    assert all(p.requires_grad for p in parent.parameters())
    second = evaluator.build(parent.spec.with_widths({"block2.mid1": 6}))   # used to fail here
    assert second.spec.blocks[1].mid1 == 6
    teacher = evaluator.teacher()
    assert teacher is not parent and all(torch.equal(a, b) for a, b in
                                         zip(teacher.state_dict().values(), parent.state_dict().values()))
