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



def test_sensitivity_plots_show_what_a_cut_buys(tiny_model, tmp_path):
    import matplotlib.pyplot as plt
    import numpy as np

    from workbench.data.benchmark import ImagePair, PairedSet
    from workbench.prune.sensitivity import (_plot_ranking, _plot_tradeoff, _tradeoff_axes, analyze,
                                             write_outputs)

    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    pset = PairedSet(name="tiny", scale=2, root=None,
                     pairs=[ImagePair("a", hr, np.ascontiguousarray(hr[::2, ::2]))])
    res = analyze(tiny_model, pset, ratios=[0.5], groups=["trunk.*"], progress=False)
    assert [a[0] for a in _tradeoff_axes(res)] == ["params_saved", "gflops_saved"]
    fig = _plot_tradeoff(res)
    assert [ax.get_xlabel().split()[0] for ax in fig.axes] == ["parameters", "GFLOPs"]
    plt.close(fig)
    fig = _plot_ranking(res)
    assert fig.axes[0].get_xscale() == "linear"
    plt.close(fig)
    timed = analyze(tiny_model, pset, ratios=[0.5], groups=["trunk.0"], progress=False,
                    latency=True, latency_shape=(1, 3, 16, 16), latency_repeats=1)
    assert [a[0] for a in _tradeoff_axes(timed)][-1] == "latency_saved"
    paths = write_outputs(timed, tmp_path / "out", tensorboard=False)
    assert paths["tradeoff"].stat().st_size > 5_000
