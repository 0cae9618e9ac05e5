"""fetch_dataset and `hessfree data fetch`, against a local HTTP server and file:// URLs only."""

import functools
import gzip
import hashlib
import http.server
import os
import socket
import threading
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from hessfree.cli.data_cmd import data_group
from hessfree.data import DatasetName, FetchAction, fetch_dataset, load_dataset
from hessfree.data import fetch as fetch_module
from hessfree.data.fetch import MNIST_FILES, RemoteFile
from hessfree.data.idx import encode_idx
from hessfree.errors import ConfigError, DataError

MNIST_DIR = Path(os.environ.get("HESSFREE_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared/data/mnist"))


def tiny_files() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 2, 2), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 6, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (2, 2, 2), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 2, dtype=np.uint8),
    }
    return {name: gzip.compress(encode_idx(a), mtime=0) for name, a in arrays.items()}


FILES = tiny_files()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def catalog(monkeypatch):
    """Pretend the tiny files are what MNIST publishes (with content checksums too)."""
    specs = tuple(RemoteFile(n, md5(d), md5(gzip.decompress(d))) for n, d in FILES.items())
    monkeypatch.setitem(fetch_module.CATALOG, DatasetName.MNIST, (specs, ("http://192.0.2.1/never-used/",)))
    return specs


@pytest.fixture
def mirror(tmp_path):
    """A directory holding the files, and a URL for it served on 127.0.0.1."""
    root = tmp_path / "mirror"
    root.mkdir()
    for name, data in FILES.items():
        (root / name).write_bytes(data)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there any more: connection refused


def test_download_verifies_and_writes_atomically(catalog, mirror, tmp_path):
    _, url = mirror
    dest = tmp_path / "data"
    seen = []
    report = fetch_dataset("mnist", dest, base_urls=[url], timeout=5, progress=seen.append)
    assert [f.action for f in report.files] == [FetchAction.DOWNLOADED] * 4
    assert seen == list(report.files)
    for f in report.files:
        assert f.source == url + f.name and f.path.read_bytes() == FILES[f.name]
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)  # no temporary files left
    assert load_dataset("mnist", data_dir=dest).n_train == 6
    # second run: everything verified in place, nothing downloaded (the mirror may be gone)
    again = fetch_dataset("mnist", dest, base_urls=[closed_port_url()], timeout=5)
    assert [f.action for f in again.files] == [FetchAction.PRESENT] * 4


def test_mirrors_are_tried_in_order_and_bad_checksums_rejected(catalog, mirror, tmp_path):
    root, url = mirror
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name, data in FILES.items():
        (corrupt / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    dest = tmp_path / "data"
    report = fetch_dataset("mnist", dest, base_urls=[closed_port_url(), corrupt.as_uri(), url], timeout=5)
    assert all(f.source.startswith(url) for f in report.files)
    assert all(f.path.read_bytes() == FILES[f.name] for f in report.files)


def test_only_bad_mirrors_fail_with_where_to_put_the_files(catalog, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name, data in FILES.items():
        (corrupt / name).write_bytes(data + b"x")
    dest = tmp_path / "data"
    with pytest.raises(DataError) as info:
        fetch_dataset("mnist", dest, base_urls=[closed_port_url(), corrupt.as_uri()], timeout=5)
    message = str(info.value)
    assert "\n" not in message and "md5: expected" in message and "offline" in message
    assert str(dest) in message and "train-images-idx3-ubyte.gz" in message
    assert list(dest.iterdir()) == []  # nothing partial left behind


def test_a_copy_failing_verification_is_replaced(catalog, mirror, tmp_path):
    _, url = mirror
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    report = fetch_dataset("mnist", dest, base_urls=[url], timeout=5)
    actions = {f.name: f.action for f in report.files}
    assert actions["t10k-labels-idx1-ubyte.gz"] is FetchAction.REPLACED
    assert (dest / "t10k-labels-idx1-ubyte.gz").read_bytes() == FILES["t10k-labels-idx1-ubyte.gz"]


def test_recompressed_or_decompressed_copies_verify_by_content(catalog, tmp_path):
    dest = tmp_path / "data"
    dest.mkdir()
    names = list(FILES)
    (dest / names[0]).write_bytes(gzip.compress(gzip.decompress(FILES[names[0]]), mtime=12345))
    (dest / names[1].removesuffix(".gz")).write_bytes(gzip.decompress(FILES[names[1]]))
    for name in names[2:]:
        (dest / name).write_bytes(FILES[name])

    def no_network(url, timeout):
        raise AssertionError(f"unexpected download of {url}")

    report = fetch_dataset("mnist", dest, opener=no_network)
    assert [f.action for f in report.files] == [FetchAction.PRESENT] * 4
    assert [f.verified_by for f in report.files[:3]] == ["md5 of the content", "md5 of the content", "published md5"]


def test_oversized_download_is_refused(catalog, monkeypatch, mirror, tmp_path):
    _, url = mirror
    monkeypatch.setattr(fetch_module, "MAX_FILE_BYTES", 10)
    with pytest.raises(DataError, match="refused"):
        fetch_dataset("mnist", tmp_path / "data", base_urls=[url], timeout=5)
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.skipif(not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists(), reason="real MNIST not present")
def test_real_mnist_copy_verifies_against_the_constants(tmp_path):
    """The shared copy is recompressed: it verifies through the published content MD5s."""
    for spec in MNIST_FILES:
        os.symlink(MNIST_DIR / spec.name, tmp_path / spec.name)
    report = fetch_dataset("mnist", tmp_path, opener=lambda url, timeout: pytest.fail(url))
    assert [f.action for f in report.files] == [FetchAction.PRESENT] * 4


def test_unknown_or_unfetchable_dataset(tmp_path):
    with pytest.raises(ConfigError, match="expected one of") as info:
        fetch_dataset("digits", tmp_path)
    assert info.value.exit_code == 2
    with pytest.raises(ConfigError, match="timeout"):
        fetch_dataset("mnist", tmp_path, timeout=float("nan"))


# ------------------------------------------------------------------------------------- CLI


def cli():
    group = click.Group("hessfree")
    group.add_command(data_group)
    return group


def test_cli_prints_one_line_per_file(catalog, mirror, tmp_path):
    _, url = mirror
    dest = tmp_path / "data"
    result = CliRunner().invoke(cli(), ["data", "fetch", "mnist", "--data-dir", str(dest), "--mirror", url])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4 and all("downloaded from http://127.0.0.1" in line for line in lines)
    result = CliRunner().invoke(cli(), ["data", "fetch", "mnist", "--data-dir", str(dest), "--mirror", url])
    assert result.exit_code == 0 and result.output.count("already present") == 4


def test_cli_offline_is_one_error_line_exit_1(catalog, tmp_path):
    result = CliRunner().invoke(
        cli(), ["data", "fetch", "mnist", "--data-dir", str(tmp_path / "d"), "--mirror", closed_port_url(),
                "--timeout", "5"]
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: mnist: train-images-idx3-ubyte.gz: could not download")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_cli_usage_errors_exit_2(tmp_path):
    result = CliRunner().invoke(cli(), ["data", "fetch", "timit-like", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    result = CliRunner().invoke(cli(), ["data", "fetch", "mnist"])
    assert result.exit_code == 2
