"""Pruning: coupled channel groups, importance criteria, physical removal (torch-pruning),
one-shot sensitivity analysis, soft filter pruning and ONNX export.

The public entry points most callers need::

    from workbench.prune import channel_groups, group_importance, prune_to_widths, prune_to_spec
"""
from workbench.prune.groups import ChannelGroup, channel_groups, expand_widths
from workbench.prune.surgery import drop_blocks, group_importance, prune_to_spec, prune_to_widths

__all__ = ["ChannelGroup", "channel_groups", "drop_blocks", "expand_widths", "group_importance",
           "prune_to_spec", "prune_to_widths"]
