"""The strict recipe loader: every problem at once with its YAML path, did-you-mean, exit status 2,
--set overrides parsed as YAML, smoke merging, and every shipped recipe validating."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workbench.cli import main
from workbench.core.errors import WorkbenchError
from workbench.recipes.loader import RecipeError, load_recipe, parse_recipe
from workbench.stages.train import ContrastiveConfig, FinetuneConfig, TrainFromScratchConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def _base(**top) -> dict:
    recipe = {
        "model": "rlfn_tiny_x2",
        "data": {"train": [{"layout": "samples"}]},
        "stages": [
            {"id": "train", "stage": "train", "iterations": 10, "patch_size": 64},
            {"id": "ft", "stage": "finetune", "iterations": 5, "patch_size": 32},
            {"id": "eval", "stage": "evaluate"},
        ],
    }
    recipe.update(top)
    return recipe


def _write(tmp_path: Path, recipe: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_valid_recipe_types_and_defaults() -> None:
    recipe = parse_recipe(_base())
    assert recipe.scale == 2
    train, ft, ev = (s.config for s in recipe.stages)
    assert isinstance(train, TrainFromScratchConfig) and train.iterations == 10
    assert train.lr == 5e-4 and train.betas == (0.9, 0.999) and train.eps == 1e-8 and train.batch_size == 64
    assert train.losses == [{"type": "l1", "weight": 1.0}] and train.init == "scratch"
    assert isinstance(ft, FinetuneConfig) and ft.lr == 1e-5 and ft.losses[0]["type"] == "l2"
    assert [s.folder_name for s in recipe.stages] == ["00-train", "01-ft", "02-eval"]
    # the resolved text round-trips and carries every default
    resolved = yaml.safe_load(recipe.text)
    assert resolved["stages"][0]["halve_every"] == 200_000 and len(recipe.sha256) == 64
    assert ContrastiveConfig(iterations=1).losses[1] == {"type": "contrastive", "weight": 255.0}


def test_every_problem_reported_at_once_with_paths(tmp_path: Path) -> None:
    recipe = _base(seed=-1, device="gpu0")
    recipe["data"]["train"].append({"root": str(tmp_path / "nowhere"), "layout": "div2k"})
    recipe["stages"] = [
        {"id": "train", "stage": "train", "iteratons": 10},                      # typo, missing required
        {"id": "warm", "stage": "warm_start", "iterations": 5, "lr": 1.5,       # out of range
         "batch_size": "big", "losses": [{"type": "l3"}]},                        # wrong type, bad loss
        {"id": "warm", "stage": "trian"},                                        # duplicate id, unknown type
        {"id": "ft", "stage": "finetune", "iterations": 5, "amp": "fp8", "betas": [0.9]},
    ]
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe, source="r.yaml")
    problems = info.value.problems
    text = "\n".join(problems)
    expected = [
        "seed: must be >= 0, got -1",
        "device: must be auto, cpu, cuda or cuda:N, got 'gpu0'",
        f"data.train[1].root: folder does not exist: {tmp_path / 'nowhere'}",
        "stages[0] (train).iteratons: unknown key (did you mean 'iterations'?)",
        "stages[0] (train).iterations: required field is missing",
        "stages[1] (warm).lr: must be in (0, 1), got 1.5",
        "stages[1] (warm).batch_size: must be an integer, got 'big'",
        "stages[1] (warm).losses[0].type: unknown loss 'l3'",
        "stages[2] (warm).id: duplicate id 'warm' (also stages[1])",
        "stages[2] (warm).stage: unknown stage type 'trian' (did you mean 'train'?)",
        "stages[3] (ft).amp: must be one of bf16, fp16, got 'fp8'",
        "stages[3] (ft).betas: must be a list of 2 values, got [0.9]",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in problems), f"missing {line!r} in:\n{text}"
    assert len(problems) == len(expected)


def test_loss_problems_are_checked_in_validate() -> None:
    recipe = _base()
    recipe["stages"][0]["losses"] = [{"type": "l1"}, {"type": "contrastiv", "weight": 255}]
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe)
    assert info.value.problems == [
        "stages[0] (train).losses[1].type: unknown loss 'contrastiv' (did you mean 'contrastive'?); "
        "known: contrastive, distill, l1, l2, mse"]


def test_model_scale_and_patch_checks() -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(_base(model="rlfn_tiyn_x2"))
    assert info.value.problems[0].startswith("model: unknown model 'rlfn_tiyn_x2' (did you mean 'rlfn_tiny_x2'?)")
    with pytest.raises(RecipeError) as info:
        parse_recipe(_base(model="rlfn_tiny_x5"))
    assert info.value.problems[0].startswith("model: ") and "rlfn_tiny_x5" in info.value.problems[0]
    with pytest.raises(RecipeError) as info:
        parse_recipe(_base(scale=4))
    assert info.value.problems[0] == "scale: 4 contradicts the model 'rlfn_tiny_x2' (x2)"
    recipe = _base(model="rlfn_tiny_x4")
    recipe["stages"][1]["patch_size"] = 30
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe)
    assert info.value.problems == ["stages[1] (ft).patch_size: must be a multiple of the scale 4, got 30"]
    recipe["stages"][1]["patch_size"] = 56
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe)
    assert info.value.problems[0].startswith("stages[1] (ft).patch_size: at x4 must be at least 60")
    assert "(rlfn needs LR patches of 15x15" in info.value.problems[0]
    recipe["model"] = "span_ch28_x4"  # no pooling: SPAN trains on 14 px LR patches
    assert parse_recipe(recipe).stages[1].config.patch_size == 56
    # widths need a scale; with one they are fine
    with pytest.raises(RecipeError) as info:
        parse_recipe(_base(model={"trunk": 8, "mid": 8, "esa": 4, "blocks": 2}))
    assert info.value.problems == ["scale: required when the model is given as widths"]
    assert parse_recipe(_base(model={"trunk": 8, "mid": 8, "esa": 4, "blocks": 2}, scale=2)).scale == 2


def test_training_stage_without_data_is_an_error() -> None:
    recipe = _base()
    recipe["data"] = {}
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe)
    assert [p.split(":")[0] for p in info.value.problems] == ["stages[0] (train).data", "stages[1] (ft).data"]


def test_set_overrides_are_typed_yaml_and_checked() -> None:
    recipe = parse_recipe(_base(), overrides=["stages.train.iterations=123", "stages.ft.betas=[0.5, 0.6]",
                                              "seed=7", "data.val.sets=[Set5]"])
    assert recipe.stages[0].config.iterations == 123
    assert recipe.stages[1].config.betas == (0.5, 0.6)
    assert recipe.config.seed == 7
    with pytest.raises(RecipeError) as info:
        parse_recipe(_base(), overrides=["stages.trian.iterations=5", "stages.train.lrr=0.1",
                                         "stages.train.iterations=__import__('os')", "nonsense"])
    problems = info.value.problems
    assert problems[0].startswith("--set stages.trian.iterations: no stage with id 'trian' (did you mean 'train'?)")
    assert problems[1].startswith("--set nonsense: expected KEY=VALUE")
    assert any(p.startswith("stages[0] (train).lrr: unknown key (did you mean 'lr'?)") for p in problems)
    # the value is a string, never evaluated
    assert any(p == "stages[0] (train).iterations: must be an integer, got \"__import__('os')\"" for p in problems)


def test_smoke_overrides_merge() -> None:
    recipe = _base(smoke={"seed": 3, "data": {"val": {"sets": ["Set5"]}}})
    recipe["data"]["train"] = [{"root": "/definitely/missing", "layout": "div2k"}]
    recipe["smoke"]["data"]["train"] = [{"layout": "samples"}]
    recipe["stages"][0]["smoke"] = {"iterations": 2, "batch_size": 4}
    with pytest.raises(RecipeError):
        parse_recipe(recipe)
    smoke = parse_recipe(recipe, smoke=True)
    assert smoke.config.seed == 3 and smoke.config.data.train[0].layout == "samples"
    assert smoke.stages[0].config.iterations == 2 and smoke.stages[0].config.batch_size == 4
    assert smoke.stages[1].config.iterations == 5
    full = parse_recipe(recipe, check_paths=False)
    assert full.stages[0].config.iterations == 10 and full.sha256 != smoke.sha256


def test_cli_validate_exit_status_and_message(tmp_path: Path, capsys) -> None:
    good = _write(tmp_path, _base(), "good.yaml")
    assert main(["validate", str(good)]) == 0
    assert "valid: 3 stages" in capsys.readouterr().out
    recipe = _base()
    recipe["stages"][0]["gama"] = 0.5
    recipe["stages"][1]["gamma"] = 2.0
    bad = _write(tmp_path, recipe, "bad.yaml")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: 2 problems" in err
    assert "stages[0] (train).gama: unknown key (did you mean 'gamma'?)" in err
    assert "stages[1] (ft).gamma: must be in (0, 2], got 2" not in err
    assert "stages[1] (ft).gamma: must be in (0, 1], got 2" in err
    assert "Traceback" not in err
    # run refuses the same recipe before doing any work
    assert main(["run", str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    assert main(["validate", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML (line" in capsys.readouterr().err


def test_yaml_cannot_construct_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo hacked']\nstages: []\n")
    with pytest.raises(WorkbenchError, match="not valid YAML"):
        load_recipe(path)


@pytest.mark.parametrize("recipe_path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipe_validates(recipe_path: Path) -> None:
    """Every recipe under recipes/: its smoke variant fully (data included), the full one structurally."""
    smoke = load_recipe(recipe_path, smoke=True)
    assert smoke.stages
    full = load_recipe(recipe_path, check_paths=False)
    assert [s.id for s in full.stages] == [s.id for s in smoke.stages]


def test_ntire22_recipe_matches_the_paper() -> None:
    recipe = load_recipe(REPO / "recipes" / "ntire22.yaml", check_paths=False)
    by_type = {}
    for stage in recipe.stages:
        by_type.setdefault(stage.type, []).append(stage.config)
    train = by_type["train"][0]
    assert (train.batch_size, train.patch_size, train.lr, train.betas, train.eps) == (64, 256, 5e-4, (0.9, 0.999), 1e-8)
    assert train.losses == [{"type": "l1", "weight": 1.0}] and train.init == "scratch"
    assert len(by_type["warm_start"]) == 2
    assert {"type": "contrastive", "weight": 255.0} in by_type["contrastive"][0].losses
    ft = by_type["finetune"][0]
    assert (ft.patch_size, ft.lr, ft.losses) == (640, 1e-5, [{"type": "l2", "weight": 1.0}])
    assert [s.layout for s in recipe.config.data.train] == ["div2k", "flickr2k"]
    assert recipe.stages[-1].type == "evaluate"


def test_validate_checks_the_smoke_variant_too(tmp_path: Path, capsys) -> None:
    recipe = _base()
    recipe["stages"][0]["smoke"] = {"iterations": 0, "batchsize": 2}
    path = _write(tmp_path, recipe)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "with --smoke: stages[0] (train).iterations: must be >= 1, got 0" in err
    assert "with --smoke: stages[0] (train).batchsize: unknown key (did you mean 'batch_size'?)" in err


def test_run_refuses_a_missing_gpu_or_stage(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path, _base())
    if not __import__("torch").cuda.is_available():
        assert main(["run", str(path), "--device", "cuda", "--run-dir", str(tmp_path / "r")]) == 2
        assert "no CUDA GPU is available" in capsys.readouterr().err
    assert main(["run", str(path), "--from", "fine", "--run-dir", str(tmp_path / "r2")]) == 2
    assert "no stage with id 'fine'" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_exponent_floats_without_a_dot_are_numbers() -> None:
    """PyYAML (YAML 1.1) reads 1e-5 as a string; a float field accepts it, other strings not."""
    recipe = parse_recipe(_base(), overrides=["stages.train.lr=1e-5", "stages.ft.lr=2.5E-6"])
    assert recipe.stages[0].config.lr == 1e-5 and recipe.stages[1].config.lr == 2.5e-6
    with pytest.raises(RecipeError) as info:
        parse_recipe(_base(), overrides=["stages.train.lr=1e-5x"])
    assert info.value.problems == ["stages[0] (train).lr: must be a number, got '1e-5x'"]


def test_validate_refuses_a_patch_larger_than_a_training_image(tmp_path: Path, capsys) -> None:
    """The size check reads image headers at validate time, so a run cannot stop hours in on the
    first stage whose crops do not fit; a stage's own data decides for that stage."""
    import numpy as np
    from PIL import Image

    big, mixed = tmp_path / "big", tmp_path / "mixed"
    for folder, sides in ((big, (96, 100)), (mixed, (96, 60))):
        folder.mkdir()
        for k, side in enumerate(sides):
            Image.fromarray(np.full((side, side + 8, 3), 90 + k, np.uint8)).save(folder / f"im{k}.png")
    doc = {"model": "rlfn_tiny_x4", "data": {"train": [{"root": str(mixed), "layout": "folder"}]},
           "stages": [{"id": "ft", "stage": "finetune", "iterations": 1, "patch_size": 64}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stages[0] (ft).patch_size: 64 px is larger than 1 of its 2 training images" in err
    assert "im1.png, 60 px" in err and "Traceback" not in err
    doc["stages"][0]["data"] = [{"root": str(big), "layout": "folder"}]
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(path)]) == 0
    doc["stages"][0]["patch_size"] = 60
    doc["stages"][0].pop("data")
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(path)]) == 0


@pytest.mark.parametrize("name", ["beat-ntire22", "rlfn_s-int8", "rlfn_s-prune46", "search-rlfn_s",
                                  "span-compress"])
def test_every_result_recipe_validates_on_the_real_data(name, repo_dir, shared_dir, monkeypatch,
                                                        capsys) -> None:
    """The full (not smoke) form of each result recipe against ../shared: the leakage guard, the
    patch sizes and every data folder, as `workbench run` would meet them (ntire22 needs DIV2K)."""
    monkeypatch.chdir(repo_dir)
    assert main(["validate", f"recipes/{name}.yaml"]) == 0, capsys.readouterr().err
