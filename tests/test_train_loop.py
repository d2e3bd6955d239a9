"""The training loop: deterministic data order, exact resume, callbacks, NaN stop, full-disk safety."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import workbench.models.artifacts as artifacts
from workbench.core.errors import WorkbenchError
from workbench.models import create_model
from workbench.train.loop import (CHECKPOINT_FILE, Callback, TrainingDiverged, TrainSettings,
                                  epoch_batches, fit, load_checkpoint)


pytestmark = pytest.mark.usefixtures("one_thread")


class ToyPatches:
    """(lr, hr) pairs that depend only on (seed, epoch, index), like PatchDataset; ``poison_at``
    makes HR NaN from that epoch on."""

    def __init__(self, n: int = 6, size: int = 32, poison_epoch: int | None = None) -> None:
        self.n, self.size, self.epoch, self.poison_epoch = n, size, 0, poison_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        hr = torch.rand(3, self.size, self.size, generator=g) * 255
        lr = F.avg_pool2d(hr[None], 2)[0]
        if self.poison_epoch is not None and self.epoch >= self.poison_epoch:
            hr = hr * float("nan")
        return lr, hr


def _model():
    torch.manual_seed(0)
    return create_model("rlfn_tiny_x2")


def _settings(**kw) -> TrainSettings:
    base = dict(iterations=9, batch_size=2, patch_size=32, checkpoint_every=3, log_every=1)
    base.update(kw)
    return TrainSettings(**base)


class Counter(Callback):
    def __init__(self) -> None:
        self.steps, self.epochs = 0, []

    def on_step_end(self, state) -> None:
        self.steps += 1

    def on_epoch_end(self, state) -> None:
        self.epochs.append(state.iteration)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "epochs": list(self.epochs)}

    def load_state_dict(self, d: dict) -> None:
        self.steps, self.epochs = d["steps"], list(d["epochs"])


class StopAt(Callback):
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_step_end(self, state) -> None:
        if state.iteration == self.iteration:
            raise KeyboardInterrupt


def test_data_order_is_a_function_of_seed_and_epoch() -> None:
    a = epoch_batches(10, 4, seed=1, epoch=3)
    assert a == epoch_batches(10, 4, seed=1, epoch=3)
    assert a != epoch_batches(10, 4, seed=1, epoch=4) and a != epoch_batches(10, 4, seed=2, epoch=3)
    assert len(a) == 2 and all(len(b) == 4 for b in a) and len({i for b in a for i in b}) == 8
    small = epoch_batches(3, 8, seed=0, epoch=0)        # dataset smaller than a batch: repeated
    assert len(small) == 1 and len(small[0]) == 8 and set(small[0]) == {0, 1, 2}


def test_interrupted_fit_resumes_bitwise(tmp_path: Path) -> None:
    ref_model, counter_ref = _model(), Counter()
    metrics = fit(ref_model, ToyPatches(), settings=_settings(epoch_iterations=2), device="cpu", seed=5,
                  callbacks=[counter_ref], progress=False)
    assert metrics["iterations"] == 9 and counter_ref.epochs == [2, 4, 6, 8]

    model, counter = _model(), Counter()
    with pytest.raises(KeyboardInterrupt):
        fit(model, ToyPatches(), settings=_settings(epoch_iterations=2), device="cpu", seed=5,
            checkpoint_dir=tmp_path, callbacks=[counter, StopAt(5)], progress=False)
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["iteration"] == 3
    torch.manual_seed(123)  # a different global RNG state must not matter
    model, counter = _model(), Counter()
    metrics = fit(model, ToyPatches(), settings=_settings(epoch_iterations=2), device="cpu", seed=5,
                  checkpoint_dir=tmp_path, callbacks=[counter], progress=False)
    assert metrics["resumed_from"] == 3
    assert counter.steps == 9 and counter.epochs == [2, 4, 6, 8]   # callback state restored
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    # other settings or seed: refuse the checkpoint rather than silently mixing runs
    with pytest.raises(WorkbenchError, match="other settings or seed"):
        fit(_model(), ToyPatches(), settings=_settings(lr=1e-3), device="cpu", seed=5,
            checkpoint_dir=tmp_path, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    # 6 samples, batch 2: 3 iterations per epoch; epoch 1 (iterations 4..6) is poisoned
    model = _model()
    with pytest.raises(TrainingDiverged, match=r"loss became nan at iteration 4; the last good checkpoint "
                                               r"\(iteration 3\) is kept"):
        fit(model, ToyPatches(poison_epoch=1), settings=_settings(), device="cpu", seed=0,
            checkpoint_dir=tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert ckpt["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


class FailWritesFrom(Callback):
    """From iteration ``at`` on, every file written through workbench.models.artifacts runs out of space
    half-way through (the real atomic-write code runs; only the low-level write fails)."""

    def __init__(self, monkeypatch, at: int) -> None:
        self.monkeypatch, self.at = monkeypatch, at

    def on_step_end(self, state) -> None:
        if state.iteration != self.at:
            return
        real_fdopen = os.fdopen

        class Full:
            def __init__(self, fh):
                self.fh = fh

            def write(self, data):
                self.fh.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")

            def __getattr__(self, name):
                return getattr(self.fh, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()
                return False

        self.monkeypatch.setattr(artifacts.os, "fdopen", lambda fd, mode="r", *a, **k: Full(real_fdopen(fd, mode, *a, **k)))


def test_full_disk_keeps_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    model = _model()
    with pytest.raises(WorkbenchError, match=r"could not write the checkpoint at iteration 6 \(no space left "
                                             r"on device\); the previous checkpoint \(iteration 3\) is intact"):
        fit(model, ToyPatches(), settings=_settings(), device="cpu", seed=0, checkpoint_dir=tmp_path,
            callbacks=[FailWritesFrom(monkeypatch, 4)], progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]   # no temporary debris
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["iteration"] == 3
    # and the run can go on from it once there is space again
    metrics = fit(_model(), ToyPatches(), settings=_settings(), device="cpu", seed=0, checkpoint_dir=tmp_path,
                  progress=False)
    assert metrics["resumed_from"] == 3


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(WorkbenchError, match="cannot read the training checkpoint"):
        fit(_model(), ToyPatches(), settings=_settings(), device="cpu", seed=0, checkpoint_dir=tmp_path,
            progress=False)


def test_validation_and_tensorboard(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    calls = []

    def val_fn(model):
        calls.append(model.training)
        return {"psnr_y": 20.0 + len(calls), "images": {"a": torch.zeros(8, 8, 3, dtype=torch.uint8)}}

    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    metrics = fit(_model(), ToyPatches(), settings=_settings(val_every=4), device="cpu", seed=0,
                  val_fn=val_fn, writer=writer, progress=False)
    writer.close()
    assert calls == [False, False, False]        # at 4, 8 and the end, in eval mode
    assert metrics["val_psnr_y"] == 23.0
    assert metrics["curve"]["val"] == [[4, 21.0], [8, 22.0], [9, 23.0]]
    assert [i for i, _ in metrics["curve"]["loss"]] == list(range(1, 10))   # log_every 1
    from workbench.train.curves import write_curve

    assert write_curve(metrics["curve"], tmp_path / "curve.png", title="t")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not write_curve({"loss": [], "val": []}, tmp_path / "empty.png", title="t")
    assert not (tmp_path / "empty.png").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()
    assert {"loss/total", "loss/l1", "lr", "val/psnr_y"} <= set(tags["scalars"])
    assert "sr/a" in tags["images"]


def test_worker_processes_do_not_change_the_result() -> None:
    """Loader workers (num_workers=2) feed exactly the batches the main process would."""
    a, b = _model(), _model()
    fit(a, ToyPatches(), settings=_settings(num_workers=0, checkpoint_every=0), device="cpu", seed=2, progress=False)
    fit(b, ToyPatches(), settings=_settings(num_workers=2, checkpoint_every=0), device="cpu", seed=2, progress=False)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


class Trajectory(Callback):
    """The model's floating-point weights after every optimiser step."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, state) -> None:
        self.states.append({k: v.detach().clone() for k, v in state.model.state_dict().items()})


def test_ema_model_is_the_moving_average_of_the_trajectory(tmp_path: Path) -> None:
    decay = 0.6
    start = {k: v.clone() for k, v in _model().state_dict().items()}
    plain, path = _model(), Trajectory()
    fit(plain, ToyPatches(), settings=_settings(), device="cpu", seed=3, callbacks=[path], progress=False)
    expected = {k: v.clone() for k, v in start.items()}
    for step in path.states:
        for k, v in step.items():
            if v.is_floating_point():
                expected[k] = decay * expected[k] + (1 - decay) * v
    seen: list[float] = []
    averaged, path2 = _model(), Trajectory()
    val = lambda m: seen.append(float(next(m.parameters()).detach().sum())) or {"psnr_y": 0.0}  # noqa: E731
    fit(averaged, ToyPatches(), settings=_settings(ema=decay), device="cpu", seed=3,
        callbacks=[path2], val_fn=val, progress=False)
    # the averaged run trains the same trajectory (averaging never feeds back into the steps) ...
    for a, b in zip(path.states[-1].values(), path2.states[-1].values()):
        assert torch.equal(a, b)
    # ... and ends holding the average, which is also what validation scored
    for k, v in averaged.state_dict().items():
        assert torch.allclose(v, expected[k], atol=1e-6), k
    assert any(not torch.equal(v, path.states[-1][k]) for k, v in averaged.state_dict().items())
    assert seen == [pytest.approx(float(next(averaged.parameters()).detach().sum()), abs=1e-5)]


def test_ema_resumes_bitwise_and_is_part_of_the_settings(tmp_path: Path) -> None:
    ref = _model()
    fit(ref, ToyPatches(), settings=_settings(ema=0.9), device="cpu", seed=5, progress=False)
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, ToyPatches(), settings=_settings(ema=0.9), device="cpu", seed=5,
            checkpoint_dir=tmp_path, callbacks=[StopAt(5)], progress=False)
    assert "ema" in load_checkpoint(tmp_path / CHECKPOINT_FILE)
    model = _model()
    fit(model, ToyPatches(), settings=_settings(ema=0.9), device="cpu", seed=5,
        checkpoint_dir=tmp_path, progress=False)
    for (name, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    # the finished stage resumed again hands on the same average, not the raw weights
    again = _model()
    fit(again, ToyPatches(), settings=_settings(ema=0.9), device="cpu", seed=5,
        checkpoint_dir=tmp_path, progress=False)
    for a, b in zip(ref.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(WorkbenchError, match="other settings or seed"):
        fit(_model(), ToyPatches(), settings=_settings(ema=0.99), device="cpu", seed=5,
            checkpoint_dir=tmp_path, progress=False)
