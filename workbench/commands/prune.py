"""`workbench prune groups|apply`: list a model's coupled channel groups, or prune it to widths."""
from __future__ import annotations

import argparse
from pathlib import Path

from workbench.errors import WorkbenchError

HELP = "list a model's channel groups, or prune it physically to given group widths"

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

examples:
  workbench prune groups --model rlfn_s_x4
  workbench prune apply --model rlfn_s_x4 --widths trunk=46 block2.mid1=40 --out pruned46
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
    apply.add_argument("--criterion", default="l1", metavar="NAME",
                       help="importance criterion deciding which channels go (l1, l2, l1_full, output; "
                            "default l1)")
    apply.add_argument("--out", required=True, type=Path, metavar="ARTIFACT",
                       help="artifact folder to write (replaced atomically if it exists)")


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

    from workbench.artifacts import load_model, make_lineage, save_artifact

    if args.prune_command is None:
        raise WorkbenchError("say what to do: 'workbench prune groups' or 'workbench prune apply' "
                             "(see --help)")
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
    before = sum(p.numel() for p in art.model.parameters())
    pruned = prune_to_widths(art.model, widths, criterion=args.criterion)
    after = sum(p.numel() for p in pruned.parameters())
    resolved = expand_widths(art.spec, widths)
    lineage = make_lineage(parent=art if art.path else args.model, stage="prune",
                           criterion=args.criterion, widths=resolved)
    save_artifact(args.out, pruned, lineage=lineage,
                  config={"command": "prune apply", "widths": resolved, "criterion": args.criterion},
                  metrics={"params": after, "params_parent": before})
    old = group_widths(art.spec)
    changed = ", ".join(f"{n} {old[n]}->{w}" for n, w in resolved.items() if old[n] != w)
    print(f"pruned {changed or 'nothing'}; params {before:,} -> {after:,} "
          f"({100 * (1 - after / before):.1f}% fewer)")
    print(f"wrote {args.out}")
    return 0
