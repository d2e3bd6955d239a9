"""`workbench data download` against a local HTTP server: resume from a partial file, an
interrupted transfer, checksum verification, unpacking into the training layout, idempotence."""
from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from workbench.cli import main
from workbench.data import download as dl
from workbench.data.images import encode_png
from workbench.data.training import find_training_pairs
from workbench.core.errors import WorkbenchError


class _Server:
    """Serves ``files`` (name -> bytes) with Range support; can cut a response short."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None  # bytes of the body to send before dropping the connection
        self.ignore_range = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                outer.requests.append((name, rng))
                data = outer.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not outer.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_after is not None:
                    self.wfile.write(body[: outer.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> "_Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with _Server() as srv:
        yield srv


def _png(seed: int, h: int = 16, w: int = 20) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _div2k_archives(scale: int = 4) -> dict[str, bytes]:
    """Miniature DIV2K zips with the member paths of the real ones."""
    hr = {f"DIV2K_train_HR/{k:04d}.png": _png(k) for k in (1, 2)}
    lr = {f"DIV2K_train_LR_bicubic/X{scale}/{k:04d}x{scale}.png": _png(k, 4, 5) for k in (1, 2)}
    return {"DIV2K_train_HR.zip": _zip(hr), f"DIV2K_train_LR_bicubic_X{scale}.zip": _zip(lr)}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def small_known(monkeypatch, server):
    """Point the recorded DIV2K archives at the miniature ones (their real sizes and checksums)."""
    files = _div2k_archives()
    server.files.update(files)
    for name, data in files.items():
        real = dl.KNOWN_ARCHIVES[name]
        monkeypatch.setitem(dl.KNOWN_ARCHIVES, name, dl.Archive(
            name=name, url=real.url, provides=real.provides, size=len(data),
            sha256=hashlib.sha256(data).hexdigest()))
    return files


def test_download_resumes_from_partial_file(tmp_path: Path, server) -> None:
    data = bytes(range(256)) * 400
    server.files["a.zip"] = data
    dest = tmp_path / "a.zip"
    (tmp_path / "a.zip.part").write_bytes(data[:30000])
    dl.download_file(server.url + "a.zip", dest, checksum=_sha(data), size=len(data), progress=False)
    assert dest.read_bytes() == data and not (tmp_path / "a.zip.part").exists()
    assert server.requests == [("a.zip", "bytes=30000-")]


def test_interrupted_download_keeps_part_and_next_run_resumes(tmp_path: Path, server) -> None:
    data = np.random.default_rng(0).bytes(50000)
    server.files["b.zip"] = data
    server.cut_after = 12000
    dest = tmp_path / "b.zip"
    with pytest.raises(WorkbenchError, match=r"download interrupted after 24000 bytes.*b\.zip\.part"):
        dl.download_file(server.url + "b.zip", dest, checksum=_sha(data), retries=1, progress=False)
    assert (tmp_path / "b.zip.part").read_bytes() == data[:24000]  # each try resumed the last
    assert server.requests == [("b.zip", None), ("b.zip", "bytes=12000-")]
    server.cut_after = None
    dl.download_file(server.url + "b.zip", dest, checksum=_sha(data), progress=False)
    assert dest.read_bytes() == data
    assert server.requests[-1] == ("b.zip", "bytes=24000-")


def test_server_ignoring_range_restarts(tmp_path: Path, server) -> None:
    data = b"0123456789" * 1000
    server.files["c.zip"] = data
    server.ignore_range = True
    (tmp_path / "c.zip.part").write_bytes(b"garbage!" * 10)
    dl.download_file(server.url + "c.zip", tmp_path / "c.zip", checksum=_sha(data), progress=False)
    assert (tmp_path / "c.zip").read_bytes() == data


def test_complete_part_file_gets_416_and_is_accepted(tmp_path: Path, server) -> None:
    data = b"x" * 5000
    server.files["d.zip"] = data
    (tmp_path / "d.zip.part").write_bytes(data)
    dl.download_file(server.url + "d.zip", tmp_path / "d.zip", checksum=_sha(data), progress=False)
    assert (tmp_path / "d.zip").read_bytes() == data


def test_checksum_mismatch_sets_file_aside(tmp_path: Path, server) -> None:
    server.files["e.zip"] = b"tampered" * 100
    wrong = "sha256:" + "0" * 64
    with pytest.raises(WorkbenchError, match=r"sha256 checksum mismatch \(expected 0{64}, got [0-9a-f]{64}\); "
                                             r"the file was kept as .*e\.zip\.bad and not unpacked"):
        dl.download_file(server.url + "e.zip", tmp_path / "e.zip", checksum=wrong, progress=False)
    assert (tmp_path / "e.zip.bad").exists() and not (tmp_path / "e.zip").exists()
    md5 = hashlib.md5(b"tampered" * 100).hexdigest()
    dl.download_file(server.url + "e.zip", tmp_path / "e.zip", checksum=md5, progress=False)


def test_missing_file_and_refused_connection(tmp_path: Path, server) -> None:
    with pytest.raises(WorkbenchError, match="HTTP 404"):
        dl.download_file(server.url + "nope.zip", tmp_path / "nope.zip", progress=False)
    with pytest.raises(WorkbenchError, match="cannot connect"):
        dl.download_file("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", progress=False, timeout=2)


def test_cli_download_div2k_unpacks_verifies_and_is_idempotent(tmp_path: Path, server, small_known,
                                                               capsys) -> None:
    root = tmp_path / "datasets"
    argv = ["data", "download", "div2k", "--root", str(root), "--url", server.url, "--scales", "4",
            "--no-valid"]
    assert main(argv) == 0
    hr, lr = find_training_pairs(root, layout="div2k", scale=4)
    assert [p.name for p in hr] == ["0001.png", "0002.png"] and [p.name for p in lr] == ["0001x4.png", "0002x4.png"]
    assert not list(root.glob("*.zip*")) and not list(root.glob(".unpack-*"))
    record = dl.read_record(root, "DIV2K_train_HR.zip")
    assert record["verified"] is True
    assert record["sha256"] == hashlib.sha256(small_known["DIV2K_train_HR.zip"]).hexdigest()
    n_requests = len(server.requests)
    capsys.readouterr()
    assert main(argv) == 0
    assert len(server.requests) == n_requests, "a second run must not download anything"
    assert "already complete" in capsys.readouterr().out


def test_cli_download_checksum_mismatch_unpacks_nothing(tmp_path: Path, server, small_known, monkeypatch,
                                                        capsys) -> None:
    name = "DIV2K_train_HR.zip"
    real = dl.KNOWN_ARCHIVES[name]
    monkeypatch.setitem(dl.KNOWN_ARCHIVES, name, dl.Archive(name=name, url=real.url, provides=real.provides,
                                                            size=real.size, sha256="1" * 64))
    root = tmp_path / "datasets"
    code = main(["data", "download", "div2k", "--root", str(root), "--url", server.url, "--scales", "4",
                 "--no-valid"])
    assert code == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "not unpacked" in err and "Traceback" not in err
    assert (root / f"{name}.bad").exists() and not (root / "DIV2K_train_HR").exists()


def test_flickr2k_tar_layout(tmp_path: Path, server) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        for path, data in {"Flickr2K/Flickr2K_HR/000001.png": _png(1, 8, 8),
                           "Flickr2K/Flickr2K_LR_bicubic/X2/000001x2.png": _png(1, 4, 4)}.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    tar = buffer.getvalue()
    server.files["Flickr2K.tar"] = tar
    fetched = dl.download_dataset("flickr2k", tmp_path, url=server.url, checksum=_sha(tar), progress=False,
                                  log=lambda *_: None)
    assert fetched == ["Flickr2K.tar"]
    hr, lr = find_training_pairs(tmp_path, layout="flickr2k", scale=2)
    assert [p.name for p in hr] == ["000001.png"] and [p.name for p in lr] == ["000001x2.png"]
    assert dl.download_dataset("flickr2k", tmp_path, url=server.url, progress=False, log=lambda *_: None) == []


def test_unsafe_archive_member_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"../escape.txt": b"x"}))
    with pytest.raises(WorkbenchError, match="unsafe member path"):
        dl.unpack(archive, tmp_path / "root")
    assert not (tmp_path / "escape.txt").exists()


def test_archive_lists_and_checksum_parsing() -> None:
    names = [a.name for a in dl.dataset_archives("div2k", scales=[2, 4])]
    assert names == ["DIV2K_train_HR.zip", "DIV2K_train_LR_bicubic_X2.zip", "DIV2K_train_LR_bicubic_X4.zip",
                     "DIV2K_valid_HR.zip", "DIV2K_valid_LR_bicubic_X2.zip", "DIV2K_valid_LR_bicubic_X4.zip"]
    assert all(a.url.startswith("https://data.vision.ee.ethz.ch/cvl/DIV2K/") for a in dl.dataset_archives("div2k"))
    assert dl.dataset_archives("flickr2k")[0].url == "https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar"
    assert dl.KNOWN_ARCHIVES["DIV2K_train_HR.zip"].size == 3530603713
    with pytest.raises(WorkbenchError, match="x2, x3 and x4 only"):
        dl.dataset_archives("div2k", scales=[8])
    assert dl.parse_checksum("MD5:" + "a" * 32) == ("md5", "a" * 32)
    assert dl.parse_checksum("b" * 64) == ("sha256", "b" * 64)
    with pytest.raises(WorkbenchError, match="expected sha256:HEX"):
        dl.parse_checksum("sha256:xyz")
    mirror = dl.with_mirror(dl.KNOWN_ARCHIVES["DIV2K_valid_HR.zip"], "http://m/x/")
    assert mirror.url == "http://m/x/DIV2K_valid_HR.zip"
    assert dl.with_mirror(mirror, "http://n/DIV2K_valid_HR.zip").url == "http://n/DIV2K_valid_HR.zip"


# -- BSDS500 -------------------------------------------------------------------------------------

def _jpeg(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 18, 3), dtype=np.uint8)).save(
        buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _bsds_tgz() -> tuple[bytes, dict[str, bytes]]:
    """A miniature BSR_bsds500.tgz with the member paths of the real one (images, Thumbs.db,
    ground truth, the benchmark code)."""
    base = "BSR/BSDS500/data"
    members = {f"{base}/images/train/{k}.jpg": _jpeg(k) for k in (100075, 12003)}
    members |= {f"{base}/images/test/{k}.jpg": _jpeg(k) for k in (100007, 10081, 2018)}
    members |= {f"{base}/images/val/{k}.jpg": _jpeg(k) for k in (3096, 8023)}
    members |= {f"{base}/images/train/Thumbs.db": b"thumbs", f"{base}/groundTruth/train/12003.mat": b"m",
                "BSR/bench/source/match.cc": b"int main() {}"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for folder in ("BSR", "BSR/BSDS500", f"{base}/images/train"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for path, data in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), members


@pytest.fixture
def small_bsds(monkeypatch, server):
    """The recorded BSDS500 archive pointed at a miniature one (its size and checksum)."""
    import dataclasses

    tgz, members = _bsds_tgz()
    server.files["BSR_bsds500.tgz"] = tgz
    name = "BSR_bsds500.tgz"
    monkeypatch.setitem(dl.KNOWN_ARCHIVES, name, dataclasses.replace(
        dl.KNOWN_ARCHIVES[name], size=len(tgz), sha256=hashlib.sha256(tgz).hexdigest()))
    return tgz, members


def test_cli_download_bsds500_unpacks_images_only_resumes_and_is_idempotent(
        tmp_path: Path, server, small_bsds, capsys) -> None:
    tgz, members = small_bsds
    root = tmp_path / "data"
    argv = ["data", "download", "bsds500", "--root", str(root), "--url", server.url]
    server.cut_after = len(tgz) // 3
    assert main(argv + ["--retries", "0"]) == 2
    captured = capsys.readouterr()
    assert "download interrupted" in captured.err and "Traceback" not in captured.err
    assert "non-commercial" in captured.out  # the licence note comes first
    assert (root / "BSR_bsds500.tgz.part").stat().st_size == len(tgz) // 3
    assert not (root / "BSD200").exists()
    server.cut_after = None
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert server.requests[-1] == ("BSR_bsds500.tgz", f"bytes={len(tgz) // 3}-")
    assert "non-commercial research and educational purposes only" in out
    base = "BSR/BSDS500/data/images"
    train = sorted(p.name for p in (root / "BSD200").iterdir())
    test = sorted(p.name for p in (root / "BSDS500-test200").iterdir())
    assert train == ["100075.jpg", "12003.jpg"]  # no Thumbs.db, no ground truth
    assert test == ["100007.jpg", "10081.jpg", "2018.jpg"]
    assert (root / "BSD200" / "12003.jpg").read_bytes() == members[f"{base}/train/12003.jpg"]  # as they come
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["BSD200", "BSDS500-test200"]
    record = dl.read_record(root, "BSR_bsds500.tgz")
    assert record["verified"] is True and record["folders"] == ["BSD200", "BSDS500-test200"]
    assert record["sha256"] == hashlib.sha256(tgz).hexdigest()
    hr, lr = find_training_pairs(root / "BSD200", layout="folder", scale=4)
    assert [p.suffix for p in hr] == [".jpg", ".jpg"] and lr is None
    n_requests = len(server.requests)
    assert main(argv) == 0
    assert len(server.requests) == n_requests, "a second run must not download anything"
    assert "already complete" in capsys.readouterr().out


def test_bsds500_keeps_an_existing_folder_and_checks_the_checksum(tmp_path: Path, server, small_bsds,
                                                                  monkeypatch, capsys) -> None:
    import dataclasses

    root = tmp_path / "data"
    (root / "BSD200").mkdir(parents=True)
    (root / "BSD200" / "100075.png").write_bytes(_png(1))  # e.g. ../shared/data's PNG copies
    fetched = dl.download_dataset("bsds500", root, url=server.url, progress=False, log=lambda *_: None)
    assert fetched == ["BSR_bsds500.tgz"]
    assert [p.name for p in (root / "BSD200").iterdir()] == ["100075.png"]  # not merged into
    assert len(list((root / "BSDS500-test200").iterdir())) == 3
    other = tmp_path / "other"
    name = "BSR_bsds500.tgz"
    monkeypatch.setitem(dl.KNOWN_ARCHIVES, name, dataclasses.replace(dl.KNOWN_ARCHIVES[name], sha256="2" * 64))
    assert main(["data", "download", "bsds500", "--root", str(other), "--url", server.url]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "Traceback" not in err
    assert (other / f"{name}.bad").exists() and not (other / "BSD200").exists()


def test_bsds500_archive_record() -> None:
    archive = dl.dataset_archives("bsds500")[0]
    assert archive.url == ("https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/"
                           "BSR_bsds500.tgz")
    assert archive.size == 70763455
    assert archive.sha256 == "97e49d31764f3912f0c4122707d53062ac9e783ba0f095e447a4d53c1a41af8e"
    assert archive.targets == ("BSD200", "BSDS500-test200")
    assert all("/val" not in src for src, _ in archive.members)  # B100 is an evaluation set
    assert dl.with_mirror(archive, "http://m/").members == archive.members
