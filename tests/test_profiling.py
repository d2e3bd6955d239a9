"""NTIRE counts (exact for every checkpoint), latency records, NTIRE protocol, width sweep, CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from workbench.models.artifacts import load_artifact
from workbench.cli import main
from workbench.data.images import write_image
from workbench.core.errors import WorkbenchError
from workbench.measure.profiling import (measure_latency, ntire_counts, ntire_latency, parse_range,
                                 parse_shape, sweep_trunk_widths)

COUNTED = ["rlfn_x4", "rlfn_s_x4", "rlfn_ntire_x4", "rlfn_x2", "rlfn_s_x2"]


@pytest.fixture(scope="module")
def expected(shared_dir):
    return json.loads((shared_dir / "reference" / "expected.json").read_text())["checkpoints"]


@pytest.mark.parametrize("ckpt", COUNTED + ["ntire22_team04_rlfn"])
def test_ntire_counts_match_the_challenge(ckpt, expected, repo_dir):
    art = load_artifact(repo_dir / "checkpoints" / f"{ckpt}.pth")
    c = ntire_counts(art.model)
    ref = expected["rlfn_ntire_x4" if ckpt == "ntire22_team04_rlfn" else ckpt]
    assert c["params"] == ref["params"]
    assert round(c["flops_g"], 2) == pytest.approx(ref["ntire_flops_g"], abs=1e-9)
    assert round(c["acts_m"], 2) == pytest.approx(ref["ntire_acts_m"], abs=1e-9)
    assert c["convs"] == ref["convs"]


def test_counts_hand_computed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.05),
                          nn.Conv2d(4, 2, 1), nn.Sigmoid())
    c = ntire_counts(model, input_shape=(1, 3, 8, 8))
    macs = 64 * 4 * 27 + 64 * 2 * 4  # out elements x (in channels x kernel area), no bias
    assert c["conv_macs"] == macs
    assert c["flops_g"] == pytest.approx((macs + 64 * 4) / 1e9)  # + LeakyReLU outputs
    assert c["acts_m"] == pytest.approx((64 * 4 + 64 * 2) / 1e6)
    assert c["convs"] == 2 and c["params"] == 4 * 27 + 4 + 2 * 4 + 2
    # counting runs shapes only: the model's weights are untouched and it stays on CPU
    assert next(model.parameters()).device.type == "cpu"


def test_counts_scale_with_input_and_follow_pruned_widths(tiny_spec):
    from workbench.models import RLFN

    small = ntire_counts(RLFN(tiny_spec), input_shape=(1, 3, 32, 32))
    big = ntire_counts(RLFN(tiny_spec), input_shape=(1, 3, 64, 64))
    assert big["conv_macs"] > 3 * small["conv_macs"]
    pruned = RLFN(tiny_spec.with_widths({"block1.mid1": 3}))
    assert ntire_counts(pruned, input_shape=(1, 3, 32, 32))["conv_macs"] < small["conv_macs"]


LATENCY_FIELDS = {"median_ms", "p90_ms", "mean_ms", "min_ms", "repeats", "warmup", "device",
                  "device_name", "dtype", "threads", "torch", "input_shape"}


def test_measure_latency_record(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    threads = torch.get_num_threads()
    r = measure_latency(tiny_model, input_shape=(1, 3, 16, 16), warmup=1, repeats=5, threads=1)
    assert LATENCY_FIELDS <= set(r)
    assert r["repeats"] == 5 and r["threads"] == 1 and r["device"] == "cpu"
    assert r["dtype"] == "float32" and r["input_shape"] == [1, 3, 16, 16]
    assert r["torch"] == torch.__version__
    assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
    assert torch.get_num_threads() == threads  # restored
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    bf = measure_latency(tiny_model, input_shape=(1, 3, 16, 16), warmup=0, repeats=2,
                         dtype="bf16", channels_last=True)
    assert bf["dtype"] == "bfloat16" and bf["channels_last"] is True
    cpu = measure_latency(tiny_model, input_shape=(1, 3, 16, 16), warmup=0, repeats=2, clock="cpu")
    assert cpu["clock"] == "cpu" and cpu["median_ms"] >= 0 and r["clock"] == "wall"
    with pytest.raises(WorkbenchError):
        measure_latency(tiny_model, input_shape=(1, 3, 16, 16), dtype="fp16")  # CPU
    with pytest.raises(WorkbenchError, match="clock"):
        measure_latency(tiny_model, input_shape=(1, 3, 16, 16), clock="sundial")
    if not torch.cuda.is_available():
        with pytest.raises(WorkbenchError, match="CUDA"):
            measure_latency(tiny_model, device="cuda")


def test_ntire_latency_over_a_folder(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    for i, size in enumerate([(20, 24), (32, 16)]):
        write_image(tmp_path / f"im{i}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    r = ntire_latency(tiny_model, tmp_path, device="cpu", warmup=1)
    assert r["images"] == 2 and [p["name"] for p in r["per_image"]] == ["im0", "im1"]
    assert r["mean_ms"] == pytest.approx(np.mean([p["ms"] for p in r["per_image"]]))
    assert r["per_image"][1]["shape"] == [32, 16]
    assert {"device", "dtype", "threads", "torch"} <= set(r)
    with pytest.raises(WorkbenchError, match="folder of LR images does not exist"):
        ntire_latency(tiny_model, tmp_path / "missing", device="cpu")


def test_sweep_rebuilds_trunk_widths(tiny_spec, tmp_path):
    rows = sweep_trunk_widths(tiny_spec, [4, 8, 12], input_shape=(1, 3, 16, 16), warmup=0,
                              repeats=2, progress=False)
    assert [r["width"] for r in rows] == [4, 8, 12]
    assert rows[0]["params"] < rows[1]["params"] < rows[2]["params"]
    assert all(LATENCY_FIELDS <= set(r) for r in rows)
    from workbench.models import RLFN

    # width 8 is the tiny spec itself; middle/ESA widths are kept
    assert rows[1]["params"] == sum(p.numel() for p in RLFN(tiny_spec).parameters())
    both = sweep_trunk_widths(tiny_spec, [4], input_shape=(1, 3, 16, 16), warmup=0, repeats=1,
                              include_mid=True, deploy_mode="fused", progress=False)
    assert both[0]["params"] < rows[0]["params"] and both[0]["include_mid"] is True
    assert both[0]["deploy_mode"] == "fused" and both[0]["median_ms"] > 0


def test_parsers():
    assert parse_shape("1x3x64x48") == (1, 3, 64, 48)
    assert parse_range("32:40:4") == [32, 36, 40]
    assert parse_range("8,16") == [8, 16]
    for bad in ("1x3x64", "axb"):
        with pytest.raises(WorkbenchError):
            parse_shape(bad)
    for bad in ("40:32", "x", "0:4"):
        with pytest.raises(WorkbenchError):
            parse_range(bad)


def test_profile_cli_counts_latency_sweep_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    rc = main(["profile", "--model", "rlfn_tiny_x4", "--input", "1x3x24x24", "--repeats", "2",
               "--warmup", "1", "--threads", "1", "--clock", "cpu", "--sweep", "4:8:4", "--sweep-dir",
               str(tmp_path / "sw"), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "params" in text and "FLOPs" in text and "latency" in text and "sweep" in text
    report = json.loads(out.read_text())
    assert report["counts"]["params"] == 8744
    lat = report["latency"]
    assert lat["threads"] == 1 and lat["input_shape"] == [1, 3, 24, 24] and lat["dtype"] == "float32"
    assert lat["torch"] == torch.__version__ and lat["device"] == "cpu" and lat["clock"] == "cpu"
    assert report["sweep"]["rows"][0]["clock"] == "cpu"
    with open(tmp_path / "sw" / "sweep_rlfn_tiny_x4.csv") as fh:
        assert [int(r["width"]) for r in csv.DictReader(fh)] == [4, 8]
    png = (tmp_path / "sw" / "sweep_rlfn_tiny_x4.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_cli_released_counts(capsys):
    assert main(["profile", "--model", "rlfn_ntire_x4", "--no-latency"]) == 0
    text = capsys.readouterr().out
    assert "317,218" in text and "19.70 G" in text and "80.05 M" in text


def test_profile_cli_bad_input_shape(capsys):
    assert main(["profile", "--model", "rlfn_tiny_x4", "--input", "3x256"]) == 2
    assert "3x256" in capsys.readouterr().err
