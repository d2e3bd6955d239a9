"""`workbench validate RECIPE`: check a recipe strictly, report every problem at once, run nothing."""
from __future__ import annotations

import argparse

HELP = "check a recipe (types, ranges, unknown keys, data folders) without running anything"
DESCRIPTION = """\
Load RECIPE with the same strict loader `workbench run` uses and report every problem at once,
each with the YAML path of the field (e.g. `stages[4] (sfp).ratio: must be in (0, 1), got 1.5`):
unknown keys (with a did-you-mean), wrong types, out-of-range values, duplicate stage ids,
unknown stage types, a model that cannot be found, missing or malformed data folders.
Without --smoke the recipe's smoke variant is checked as well. Exit status 0 when the recipe is
valid, 2 otherwise. Nothing is trained or written.

examples:
  workbench validate recipes/ntire22.yaml --smoke
  workbench validate recipes/ntire22.yaml --set stages.train.iterations=1000 --skip-data-check
  workbench validate --explain            # every stage type with its fields and defaults
"""


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe options `validate` and `run` share."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field before validation, e.g. stages.train.iterations=500 or "
                             "seed=3 (VALUE is parsed as YAML; repeatable)")
    parser.add_argument("--smoke", action="store_true",
                        help="apply the recipe's smoke: overrides (tiny data and lengths: minutes on a CPU)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe YAML file")
    add_recipe_arguments(parser)
    parser.add_argument("--skip-data-check", action="store_true",
                        help="do not check that data folders and model files exist (structure only)")
    parser.add_argument("--explain", action="store_true",
                        help="list every registered stage type with its fields, defaults and ranges")
    parser.add_argument("--print", dest="print_resolved", action="store_true",
                        help="print the resolved recipe (defaults filled in) when it is valid")


def run(args: argparse.Namespace) -> int:
    from workbench.core.errors import WorkbenchError
    from workbench.recipes.loader import describe_stage_types, load_recipe

    if args.explain:
        print(describe_stage_types())
        if not args.recipe:
            return 0
    if not args.recipe:
        raise WorkbenchError("give a RECIPE file (or --explain)")
    from workbench.recipes.loader import RecipeError

    problems: list[str] = []
    recipe = None
    try:
        recipe = load_recipe(args.recipe, smoke=args.smoke, overrides=args.overrides,
                             check_paths=not args.skip_data_check)
    except RecipeError as exc:
        problems += exc.problems
    if not args.smoke:
        # the smoke variant is part of the recipe too: check its overrides in the same pass
        try:
            load_recipe(args.recipe, smoke=True, overrides=args.overrides,
                        check_paths=not args.skip_data_check)
        except RecipeError as exc:
            problems += [f"with --smoke: {p}" for p in exc.problems if p not in problems]
    if recipe is not None and not args.skip_data_check:
        problems += patch_problems(recipe)
    if problems:
        raise RecipeError(args.recipe, problems)
    assert recipe is not None
    if args.print_resolved:
        print(recipe.text, end="")
    mode = " (smoke)" if args.smoke else ""
    print(f"{args.recipe}: valid{mode}: {len(recipe.stages)} stages "
          f"({', '.join(f'{s.id}:{s.type}' for s in recipe.stages)}), sha256 {recipe.sha256[:12]}")
    return 0


def patch_problems(recipe) -> list[str]:
    """Every training stage whose HR patch is larger than one of its training images (read from
    the image headers, nothing decoded): the run would stop there, maybe hours in."""
    from workbench.data.images import image_size
    from workbench.data.training import holds_patch
    from workbench.core.errors import WorkbenchError
    from workbench.stages.utils import training_files

    problems: list[str] = []
    sizes: dict[str, tuple[int, int]] = {}
    for plan in recipe.stages:
        patch = getattr(plan.config, "patch_size", None)
        if not isinstance(patch, int) or getattr(plan.config, "skips_small_images", False):
            continue
        sources = getattr(plan.config, "data", None) or list(recipe.config.data.train)
        if not sources:
            continue
        try:
            hr, _, as_lr = training_files(sources, scale=recipe.scale, with_lr_only=True)
        except WorkbenchError:
            continue  # a missing folder is reported by the loader already
        small = []
        for path, lr_only in zip(hr, as_lr):
            key = str(path)
            if key not in sizes:
                try:
                    sizes[key] = image_size(path)
                except (WorkbenchError, OSError):
                    continue
            if not holds_patch(sizes[key], patch, recipe.scale, lr_only=lr_only):
                small.append((min(sizes[key]), path))
        if small:
            side, path = min(small)
            problems.append(f"{plan.label}.patch_size: {patch} px is larger than {len(small)} of its "
                            f"{len(hr)} training images (smallest: {path}, {side} px); lower it or give "
                            f"the stage its own data without them")
    return problems
