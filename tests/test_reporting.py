"""What the workbench tells the user about models and runs: names, descriptions, event files."""
from __future__ import annotations

from workbench.commands.eval import _labels
from workbench.models import RLFNSpec
from workbench.recipes.engine import _LazyWriter


def test_describe_reflects_every_width():
    spec = RLFNSpec.uniform(scale=4, feature=48, mid=48, esa=16, blocks=6)
    assert spec.describe() == "RLFN x4: trunk 48, mid 48, ESA 16, 6 blocks"
    inner = spec.with_widths({f"block{i}.esa.inner": 8 for i in range(1, 7)})
    assert inner.describe() == "RLFN x4: trunk 48, mid 48, ESA 16/8/16, 6 blocks"
    mixed = spec.with_widths({"block3.mid1": 40, "trunk.2": 46, "block5.esa.reduce": 12})
    text = mixed.describe()
    assert text == ("RLFN x4: trunk 48, block outputs 48,46,48,48,48,48, mid 48,48,40,48,48,48/48, "
                    "ESA 16,16,16,16,12,16/16/16, 6 blocks")
    assert len(text) < 120 and "{" not in text


def test_eval_labels_name_run_and_stage():
    refs = ["runs/ntire22/03-sfp/artifact", "runs/ntire22/05-finetune/artifact",
            "runs/other/03-sfp/artifact", "checkpoints/rlfn_s_x4.pth", "rlfn_s_x4"]
    assert _labels(refs) == ["ntire22/sfp", "ntire22/finetune", "other/sfp", "rlfn_s_x4",
                             "rlfn_s_x4#2"]


def test_unused_stage_writer_leaves_no_event_file(tmp_path):
    unused = _LazyWriter(tmp_path / "a" / "tb")
    unused.close()
    assert not (tmp_path / "a").exists()
    used = _LazyWriter(tmp_path / "b" / "tb")
    used.add_scalar("x", 1.0, 0)
    used.close()
    assert any((tmp_path / "b" / "tb").iterdir())
