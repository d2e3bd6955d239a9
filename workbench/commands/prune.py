"""`workbench prune groups|apply|plan`: list a model's coupled channel groups, prune it to widths,
or let a measured plan choose the groups that reach a latency target."""
from __future__ import annotations

import argparse
from pathlib import Path

from workbench.core.errors import WorkbenchError

HELP = "list a model's channel groups, prune it to given widths, or plan the cuts for a latency target"

DESCRIPTION = """\
Channel groups are sets of channels that must be removed together (a residual add or ESA's
multiply couples them). Their names follow the network: trunk.0 (stem; conv_1, the block-1
residual, conv_2, the upsampler's input), trunk.<i> (block i's c5 output onward),
block<i>.mid1 / mid2 (c1_r / c2_r outputs), block<i>.esa.reduce / esa.inner / esa.fuse.
Groups are derived from torch-pruning's dependency graph for every family (SPAN: feature,
block<i>.mid1 / mid2, tail, fuse); the conv before PixelShuffle keeps all its outputs.

  workbench prune groups --model REF
      table of groups: width, producing convs (filters) and consuming convs (inputs)

  workbench prune apply --model REF --widths NAME=WIDTH ... --out ARTIFACT
      remove the lowest-importance channels of each named group so it has WIDTH channels and
      write an artifact (it reloads from the artifact alone; its lineage names the parent).
      NAME may be 'trunk' (every trunk.* group) or a shell pattern ('block*.esa.inner').
      Prints PSNR-Y on the embedded Set5 before and after (one-shot, no retraining) and warns
      when it drops by more than 0.5 dB.

  workbench prune plan --model REF --width 16 --latency-ratio 0.8 [--deploy fused bf16] --out DIR
      choose the groups by measurement: each candidate group is cut alone to --width and scored
      one-shot on the validation set; they are taken in order of that PSNR drop, and after each
      the model cut so far is timed interleaved with the parent in every --deploy mode, until it
      runs at most --latency-ratio times the parent's latency in all of them. Writes plan.csv,
      plan.json, plan.png (one-shot PSNR against latency as the plan grows) and, when the target
      is reached, the pruned model at DIR/artifact (exit 1 when it is not: the table shows the
      closest point). Sums of single-group savings mislead on CPUs that compute channels in blocks,
      so nothing is added up.

examples:
  workbench prune groups --model rlfn_s_x4
  workbench prune apply --model rlfn_s_x4 --widths trunk=46 block2.mid1=40 --out pruned46
  workbench prune plan --model span_ch28_x4 --width 16 --latency-ratio 0.8 --deploy fused bf16 \\
      --out plans/span
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="prune_command", metavar="ACTION")
    groups = sub.add_parser("groups", help="list the channel groups, widths and member layers",
                            description="List every prunable channel group of a model.")
    groups.add_argument("--model", required=True, metavar="REF",
                        help="a model name (rlfn_s_x4), released .pth or artifact")
    groups.add_argument("--json", action="store_true", help="print JSON instead of a table")
    apply = sub.add_parser("apply", help="prune to given group widths and write an artifact",
                           description="Prune physically to the given widths; write an artifact.")
    apply.add_argument("--model", required=True, metavar="REF",
                       help="a model name (rlfn_s_x4), released .pth or artifact")
    apply.add_argument("--widths", nargs="+", required=True, metavar="NAME=WIDTH",
                       help="target widths: trunk=46 (every trunk group), block2.mid1=40, "
                            "'block*.esa.inner=8' ...")
    apply.add_argument("--criterion", default="output", metavar="NAME",
                       help="importance criterion deciding which channels go: output (default: the "
                            "measured output change when a channel is silenced) or the filter norms "
                            "l1, l2, l1_full (instant, but on trained weights l1 with trunk=46 costs "
                            "rlfn_s_x4 about 23 dB)")
    apply.add_argument("--no-eval", action="store_true",
                       help="skip the PSNR-Y check before and after on the embedded Set5")
    apply.add_argument("--out", required=True, type=Path, metavar="ARTIFACT",
                       help="artifact folder to write (an existing artifact is replaced atomically; "
                            "anything else there is refused unless --force)")
    apply.add_argument("--force", action="store_true",
                       help="replace whatever is at --out, even a folder or file that is not an artifact")
    apply.add_argument("--latency", action="store_true",
                       help="also time parent and pruned model side by side (interleaved) in "
                            "--deploy mode and report the ratio")
    apply.add_argument("--deploy", default=None, metavar="MODE",
                       help="deploy mode of --latency (default: the fastest fp32 mode, fused on CPU)")
    apply.add_argument("--latency-shape", default="1x3x256x256", metavar="NxCxHxW",
                       help="input of --latency (default 1x3x256x256)")
    apply.add_argument("--latency-rounds", type=int, default=10, metavar="N",
                       help="interleaved (parent, pruned) pairs for --latency (default 10)")


    plan = sub.add_parser("plan", help="choose the groups to cut for a latency target, by measurement",
                          description="Grow a pruning plan in sensitivity order until the model runs "
                                      "at most --latency-ratio times the parent's latency (see "
                                      "'workbench prune --help').")
    plan.add_argument("--model", required=True, metavar="REF",
                      help="a model name (span_ch28_x4), released .pth or artifact")
    plan.add_argument("--width", type=int, default=16, metavar="W",
                      help="width each chosen group is cut to (default 16: oneDNN's channel block)")
    plan.add_argument("--latency-ratio", type=float, default=0.8, metavar="R",
                      help="target: latency <= R times the parent's in every mode (default 0.8)")
    plan.add_argument("--groups", nargs="+", default=None, metavar="PATTERN",
                      help="candidate groups, shell patterns (default: every group wider than W)")
    plan.add_argument("--deploy", nargs="+", default=None, metavar="MODE",
                      help="deploy modes timed (default: the fastest fp32 mode, fused on CPU)")
    plan.add_argument("--set", default="Set5", help="validation set of the one-shot scores (default Set5)")
    plan.add_argument("--data-root", default=None, metavar="DIR",
                      help="folder holding --set (default: the embedded Set5)")
    plan.add_argument("--criterion", default="output", metavar="NAME", help="channel importance (default output)")
    plan.add_argument("--latency-shape", default="1x3x256x256", metavar="NxCxHxW",
                      help="LR input timed (default 1x3x256x256)")
    plan.add_argument("--rounds", type=int, default=10, metavar="N",
                      help="interleaved (parent, pruned) pairs per step (default 10)")
    plan.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads while timing")
    plan.add_argument("--max-groups", type=int, default=None, metavar="N", help="take at most N groups")
    plan.add_argument("--out", required=True, type=Path, metavar="DIR",
                      help="folder for plan.csv, plan.json, plan.png and artifact/")
    plan.add_argument("--no-plots", action="store_true", help="skip plan.png")


def run_plan(args: argparse.Namespace) -> int:
    from workbench.data.benchmark import load_set
    from workbench.measure.profiling import parse_shape
    from workbench.models.artifacts import load_model, make_lineage, save_artifact
    from workbench.prune.plan import plan_cuts, write_plan
    from workbench.prune.surgery import prune_to_widths

    art = load_model(args.model)
    pset = load_set(args.set, art.spec.scale, data_root=args.data_root)
    plan = plan_cuts(art.model, pset, width=args.width, target_ratio=args.latency_ratio,
                     groups=args.groups, criterion=args.criterion, modes=args.deploy,
                     input_shape=parse_shape(args.latency_shape), rounds=args.rounds,
                     threads=args.threads, max_groups=args.max_groups, progress=True)
    files = write_plan(plan, args.out, plots=not args.no_plots)
    print(plan.format())
    if not plan.reached:
        print(f"wrote {', '.join(str(f) for f in files)}; no artifact (target not reached)")
        return 1
    pruned = prune_to_widths(art.model, plan.widths, criterion=args.criterion)
    save_artifact(args.out / "artifact", pruned,
                  lineage=make_lineage(parent=art if art.path else args.model, stage="prune plan",
                                       criterion=args.criterion, widths=plan.widths),
                  config={"command": "prune plan", "width": args.width,
                          "latency_ratio": args.latency_ratio, "deploy": plan.modes},
                  metrics={"params": sum(p.numel() for p in pruned.parameters()),
                           "one_shot_drop_db": plan.steps[-1].drop_db,
                           "latency_ratio": plan.steps[-1].latency_ratio})
    print(f"widths: {' '.join(f'{g}={w}' for g, w in plan.widths.items())}")
    print(f"wrote {', '.join(str(f) for f in files)} and {args.out / 'artifact'}")
    return 0


def parse_widths(items: list[str]) -> dict[str, int]:
    """['trunk=46', 'block2.mid1=40'] -> {'trunk': 46, 'block2.mid1': 40} (WorkbenchError if bad)."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise WorkbenchError(f"--widths {item!r}: expected NAME=WIDTH, e.g. trunk=46")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            raise WorkbenchError(f"--widths {item!r}: width {value!r} is not an integer") from None
    return out


def _groups_table(model) -> list[dict]:
    from workbench.prune.groups import channel_groups

    return [{"group": g.name, "width": g.width, "producers": list(g.producers),
             "consumers": list(g.consumers)} for g in channel_groups(model).values()]


def run(args: argparse.Namespace) -> int:
    import json

    from workbench.models.artifacts import load_model, make_lineage, save_artifact

    if args.prune_command is None:
        raise WorkbenchError("say what to do: 'workbench prune groups', 'prune apply' or 'prune plan' "
                             "(see --help)")
    if args.prune_command == "plan":
        return run_plan(args)
    art = load_model(args.model)
    if args.prune_command == "groups":
        rows = _groups_table(art.model)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{args.model}: {art.spec.describe()}; {len(rows)} channel groups")
        print(f"{'group':<18} {'width':>5}  {'producers (output filters)':<44} consumers (inputs)")
        for r in rows:
            print(f"{r['group']:<18} {r['width']:>5}  {', '.join(r['producers']):<44} "
                  f"{', '.join(r['consumers'])}")
        from workbench.prune.groups import protected_convs

        print(f"never pruned: {', '.join(protected_convs(art.model)) or 'nothing'} output "
              "(PixelShuffle needs all out*scale^2 channels)")
        return 0

    from workbench.models import group_widths
    from workbench.prune.groups import expand_widths
    from workbench.prune.surgery import prune_to_widths

    widths = parse_widths(args.widths)
    if args.latency and args.deploy is not None:  # a bad mode fails before any work
        from workbench.measure.deploy import check_mode

        check_mode(args.deploy, "cpu")
    from workbench.models.artifacts import is_artifact_folder

    if args.out.exists() and not args.force and not is_artifact_folder(args.out):
        # before any pruning work; save_artifact refuses it too
        what = "folder" if args.out.is_dir() else "file"
        raise WorkbenchError(f"--out {args.out}: exists and is not a workbench artifact (a {what}); "
                             "not replaced: choose another path, or pass --force")
    before = sum(p.numel() for p in art.model.parameters())
    pruned = prune_to_widths(art.model, widths, criterion=args.criterion)
    after = sum(p.numel() for p in pruned.parameters())
    resolved = expand_widths(art.spec, widths)
    lineage = make_lineage(parent=art if art.path else args.model, stage="prune",
                           criterion=args.criterion, widths=resolved)
    save_artifact(args.out, pruned, lineage=lineage,
                  config={"command": "prune apply", "widths": resolved, "criterion": args.criterion},
                  metrics={"params": after, "params_parent": before}, force=args.force)
    old = group_widths(art.spec)
    changed = ", ".join(f"{n} {old[n]}->{w}" for n, w in resolved.items() if old[n] != w)
    print(f"pruned {changed or 'nothing'}; params {before:,} -> {after:,} "
          f"({100 * (1 - after / before):.1f}% fewer)")
    if not args.no_eval:
        psnr_before, psnr_after = set5_psnr_y(art.model), set5_psnr_y(pruned)
        drop = psnr_before - psnr_after
        print(f"PSNR-Y on the embedded Set5 x{art.spec.scale}: {psnr_before:.3f} dB -> {psnr_after:.3f} dB "
              f"({psnr_after - psnr_before:+.3f} dB, one-shot, before any fine-tuning)")
        if drop > MAX_DROP_DB:
            import sys

            print(f"warning: pruning costs {drop:.2f} dB PSNR-Y on Set5 (more than {MAX_DROP_DB} dB); "
                  + ("the output criterion may keep more" if args.criterion != "output"
                     else "narrow fewer channels, or fine-tune it (sfp / finetune stages)"),
                  file=sys.stderr)
    if args.latency:
        print(_latency_line(art.model, pruned, args))
    print(f"wrote {args.out}")
    return 0


#: A one-shot PSNR-Y drop on Set5 above this many dB gets a warning from `prune apply`.
MAX_DROP_DB = 0.5


def set5_psnr_y(model) -> float:
    """Mean PSNR-Y (paper protocol) of ``model`` on the embedded Set5 at its scale, on the CPU."""
    from workbench.data.benchmark import load_set
    from workbench.measure.evaluate import evaluate_set

    return float(evaluate_set(model, load_set("Set5", model.spec.scale), device="cpu",
                              progress=False).mean["psnr_y"])


def _latency_line(parent, pruned, args: argparse.Namespace) -> str:
    """Parent and pruned model timed interleaved in one deploy mode: the ratio and its spread."""
    from workbench.measure.deploy import check_mode, default_mode, prepare
    from workbench.measure.profiling import compare_latency, parse_shape

    shape = parse_shape(args.latency_shape)
    if args.latency_rounds < 1:
        raise WorkbenchError(f"--latency-rounds must be >= 1, got {args.latency_rounds}")
    mode = args.deploy or default_mode("cpu", parent)
    check_mode(mode, "cpu")
    runners = {n: prepare(m, mode=mode, example_shape=shape)
               for n, m in (("parent", parent), ("pruned", pruned))}
    p = compare_latency(runners, input_shape=shape, rounds=args.latency_rounds, warmup=2)[1]
    return (f"latency in deploy mode {mode} on {'x'.join(map(str, shape))}: pruned / parent "
            f"{p['ratio']:.3f} (p10-p90 {p['ratio_p10']:.3f}-{p['ratio_p90']:.3f} over "
            f"{p['rounds']} interleaved pairs; pruned median {p['median_ms']:.2f} ms)")
