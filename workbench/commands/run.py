"""`workbench run RECIPE`: run (or resume) a recipe's stages in a run folder."""
from __future__ import annotations

import argparse

from workbench.commands.validate import add_recipe_arguments

HELP = "run a recipe: train, prune, search and evaluate stage by stage, resumable"
DESCRIPTION = """\
Validate RECIPE strictly (every problem at once, exit 2, before any work), then run its stages in
order, each starting from the previous stage's artifact. The run folder holds the resolved recipe
and one folder per stage (<NN>-<id>/: artifact/, metrics.json, log.txt, tb/, DONE).

Rerunning the same command skips finished stages and resumes an interrupted one from its last
periodic checkpoint (bitwise identical on CPU to an uninterrupted run). A stage whose settings
changed (by editing the recipe or --set) is run again, with every stage after it; their previous
folders (artifacts included) are kept under RUN_DIR/stale/, like those of stages removed from the
recipe. One run at a time per run folder: a second one stops at once, naming the first one's pid
(RUN_DIR/run.lock). The default run folder is runs/<name>, so a recipe's name: is a plain name.

Under `torchrun --nproc_per_node N -m workbench run RECIPE ...` the training stages use
DistributedDataParallel (gloo on CPU, NCCL on GPU; batch_size is the global batch, split over the
processes); other stages run on rank 0, and only rank 0 writes files. Watch a run with
`tensorboard --logdir RUN_DIR`.

examples:
  workbench run recipes/ntire22.yaml --smoke                 # minutes on a CPU, shipped images
  workbench run recipes/ntire22.yaml --set stages.train.iterations=5000 --run-dir runs/try
  workbench run recipes/ntire22.yaml --from finetune          # rerun finetune and what follows
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    add_recipe_arguments(parser)
    parser.add_argument("--run-dir", type=str, default=None,
                        help="run folder (default: runs/<recipe name>, runs/<recipe name>-smoke with --smoke)")
    parser.add_argument("--from", dest="from_id", default=None, metavar="ID",
                        help="clear stage ID and every later stage, then run them again")
    parser.add_argument("--device", default=None,
                        help="override the recipe's device: auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def default_run_dir(recipe: "object", *, smoke: bool, root: str = "runs") -> "object":
    """runs/<recipe name>[-smoke], refused unless it is a folder directly inside the runs root
    (the name is a plain name, and no symbolic link leads elsewhere): a recipe never chooses where
    outside runs/ the workbench writes or deletes."""
    import re
    from pathlib import Path

    from workbench.core.errors import WorkbenchError
    from workbench.recipes.schema import RUN_NAME_PATTERN

    name = recipe.name + ("-smoke" if smoke else "")
    if not re.fullmatch(RUN_NAME_PATTERN, name):
        raise WorkbenchError(f"{recipe.path}: the run folder name {name!r} is not a plain name "
                             "(letters, digits, '_', '-', '.'); set name: or give --run-dir")
    base = Path(root)
    run_dir = base / name
    if run_dir.resolve().parent != base.resolve():
        raise WorkbenchError(f"{run_dir}: leads to {run_dir.resolve()}, outside the runs folder "
                             f"{base.resolve()} (a symbolic link?); give --run-dir to use it")
    return run_dir


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workbench.recipes.engine import run_recipe
    from workbench.recipes.loader import load_recipe

    import re

    from workbench.core.errors import WorkbenchError

    if args.device is not None and not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", args.device):
        raise WorkbenchError(f"--device {args.device!r}: choose auto, cpu, cuda or cuda:N")
    if args.run_dir is not None and Path(args.run_dir).exists() and not Path(args.run_dir).is_dir():
        raise WorkbenchError(f"--run-dir {args.run_dir}: is a file; a run folder is a folder")
    recipe = load_recipe(args.recipe, smoke=args.smoke, overrides=args.overrides)
    if args.from_id is not None:
        recipe.stage(args.from_id)  # unknown id: error before anything happens
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(recipe, smoke=args.smoke)
    try:
        run_recipe(recipe, run_dir=run_dir, from_id=args.from_id, device=args.device,
                   progress=not args.no_progress)
    finally:
        from workbench.train import distributed

        distributed.shutdown()
    return 0
