"""Shared fixtures: tiny models on CPU, a fixed seed, the ../shared folder beside the checkout."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.models import RLFN, RLFNSpec

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WORKBENCH_SHARED", REPO.parent / "shared"))  # override: a worktree elsewhere


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (weights, Set5/Set14/T91, reference figures); CI lays it beside the clone."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside this checkout")
    return SHARED


@pytest.fixture
def tiny_spec() -> RLFNSpec:
    """8-channel, 2-block x2 RLFN: a forward pass on 16x16 takes milliseconds."""
    return RLFNSpec.uniform(scale=2, feature=8, mid=8, esa=4, blocks=2)


@pytest.fixture
def tiny_model(tiny_spec: RLFNSpec) -> RLFN:
    torch.manual_seed(0)
    return RLFN(tiny_spec).eval()


@pytest.fixture
def images():
    """Two small noise LR images of odd sizes (uint8 HWC): inputs for output-equality checks."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8),
            rng.integers(0, 256, (17, 16, 3), dtype=np.uint8)]


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny models: two spinning OpenMP threads on a shared
    2-core machine are many times slower than one. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_smooth_images(folder: Path, *, n: int, size: int, small: int, seed: int,
                       prefix: str = "im") -> Path:
    """``n`` smooth random RGB PNGs of ``size`` px (bicubic blow-ups of ``small`` px noise, so
    that bicubic LR of them is meaningful); the same seed always gives the same images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        noise = rng.integers(0, 256, (small, small, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((size, size), Image.BICUBIC).save(folder / f"{prefix}{i}.png")
    return folder


@pytest.fixture(autouse=True, scope="session")
def _signature_cache(tmp_path_factory):
    """The leakage guard's image-signature cache in a temporary folder, not ~/.cache (tests make
    many short-lived images); subprocesses inherit it through the environment."""
    import os

    old = os.environ.get("WORKBENCH_SIGNATURE_CACHE")
    os.environ["WORKBENCH_SIGNATURE_CACHE"] = str(tmp_path_factory.mktemp("signatures") / "sig.sqlite")
    yield
    if old is None:
        os.environ.pop("WORKBENCH_SIGNATURE_CACHE", None)
    else:
        os.environ["WORKBENCH_SIGNATURE_CACHE"] = old


def kill_when_file_appears(proc, path, *, timeout: float = 120.0) -> None:
    """SIGKILL a running `workbench run` subprocess as soon as ``path`` (a checkpoint) exists."""
    import signal
    import time

    deadline = time.time() + timeout
    try:
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, f"no {path.name} appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
