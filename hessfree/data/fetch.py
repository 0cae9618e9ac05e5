"""Download the MNIST-family IDX files, verified against their published checksums.

For each of the four files: if a copy in ``data_dir`` already verifies, it is left alone;
otherwise the mirrors are tried in order, each download is streamed to a temporary file
in ``data_dir`` while its MD5 is computed, and only a file whose MD5 equals the published
one is fsync'ed and renamed over the final name (``os.replace`` is atomic), so an
interrupted or corrupted download never leaves a half-written dataset file behind.

The published MD5s are those of the ``.gz`` files as distributed (the MNIST values are
the ones torchvision and others pin; the Fashion-MNIST values are in Zalando's README).
For MNIST the MD5 of the *decompressed* files is known as well, so a recompressed or
already decompressed copy also verifies.

The library never prints: ``fetch_dataset`` returns a ``FetchReport`` and calls an
optional ``progress`` callback after each file; the CLI turns these into lines.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import http.client
import os
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import attrs

from hessfree.data.loader import DatasetName
from hessfree.atomic import atomic_file
from hessfree.errors import ConfigError, DataError

#: refuse a download (or a decompression while verifying) beyond this many bytes
MAX_FILE_BYTES = 256 << 20
READ_BYTES = 1 << 16


@attrs.frozen
class RemoteFile:
    """One distributed file: its name and the MD5s it must have."""

    name: str  # as on the mirrors and in data_dir, e.g. ``train-images-idx3-ubyte.gz``
    md5: str  # published MD5 of the .gz file
    raw_md5: str | None = None  # MD5 of the decompressed file, when known

    @property
    def stem(self) -> str:
        return self.name.removesuffix(".gz")


MNIST_FILES = (
    RemoteFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    RemoteFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    RemoteFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    RemoteFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
)
FASHION_MNIST_FILES = (
    RemoteFile("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    RemoteFile("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    RemoteFile("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    RemoteFile("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
)
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
#: constant catalogue: dataset -> (files, default mirrors)
CATALOG: dict[DatasetName, tuple[tuple[RemoteFile, ...], tuple[str, ...]]] = {
    DatasetName.MNIST: (MNIST_FILES, MNIST_MIRRORS),
    DatasetName.FASHION_MNIST: (FASHION_MNIST_FILES, FASHION_MNIST_MIRRORS),
}

Opener = Callable[[str, float], BinaryIO]


class FetchAction(enum.Enum):
    DOWNLOADED = "downloaded"
    PRESENT = "already present"
    REPLACED = "replaced a copy that failed verification"


@attrs.frozen
class FetchedFile:
    """What happened to one file."""

    name: str
    path: Path
    action: FetchAction
    source: str  # the URL it came from, or "local copy"
    verified_by: str  # which checksum matched
    n_bytes: int


@attrs.frozen
class FetchReport:
    dataset: str
    data_dir: Path
    files: tuple[FetchedFile, ...]


class _DownloadFailed(Exception):
    """One mirror failed for one file (collected into the final DataError)."""


def _md5_of_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _md5_of_content(path: Path) -> str | None:
    """MD5 of the decompressed content of a gzip file (None if unreadable or too large)."""
    digest, total = hashlib.md5(usedforsecurity=False), 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(READ_BYTES):
                total += len(chunk)
                if total > MAX_FILE_BYTES:
                    return None
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def _verify_local(data_dir: Path, spec: RemoteFile) -> FetchedFile | None:
    """A copy already in ``data_dir`` that matches a known checksum, if there is one."""
    gz, plain = data_dir / spec.name, data_dir / spec.stem
    if gz.is_file():
        if _md5_of_file(gz) == spec.md5:
            return FetchedFile(spec.name, gz, FetchAction.PRESENT, "local copy", "published md5", gz.stat().st_size)
        if spec.raw_md5 is not None and _md5_of_content(gz) == spec.raw_md5:
            return FetchedFile(spec.name, gz, FetchAction.PRESENT, "local copy", "md5 of the content",
                               gz.stat().st_size)
    if plain.is_file() and spec.raw_md5 is not None and _md5_of_file(plain) == spec.raw_md5:
        return FetchedFile(spec.stem, plain, FetchAction.PRESENT, "local copy", "md5 of the content",
                           plain.stat().st_size)
    return None


def _default_opener(url: str, timeout: float) -> BinaryIO:
    return urllib.request.urlopen(url, timeout=timeout)


def _download(url: str, spec: RemoteFile, data_dir: Path, opener: Opener, timeout: float) -> int:
    """Fetch ``url`` into ``data_dir/spec.name`` atomically if its MD5 verifies; return its size."""
    digest, n_bytes = hashlib.md5(usedforsecurity=False), 0
    with atomic_file(data_dir / spec.name) as out:
        try:
            with opener(url, timeout) as response:
                while chunk := response.read(READ_BYTES):
                    n_bytes += len(chunk)
                    if n_bytes > MAX_FILE_BYTES:
                        raise _DownloadFailed(f"more than {MAX_FILE_BYTES} bytes, refused")
                    digest.update(chunk)
                    out.write(chunk)
        except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
            raise _DownloadFailed(str(getattr(exc, "reason", None) or exc)) from None
        if digest.hexdigest() != spec.md5:  # raising here leaves the old file (if any) in place
            raise _DownloadFailed(f"md5: expected {spec.md5}, found {digest.hexdigest()}")
    return n_bytes


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def fetch_dataset(
    name: DatasetName | str,
    data_dir: str | os.PathLike,
    *,
    base_urls: Sequence[str] | None = None,
    opener: Opener | None = None,
    timeout: float = 60.0,
    progress: Callable[[FetchedFile], None] | None = None,
) -> FetchReport:
    """Make ``data_dir`` hold verified copies of the four IDX files of ``name``.

    ``base_urls`` replaces the default mirrors (tried in order, each file name appended).
    ``opener(url, timeout)`` returns a readable binary response (default
    ``urllib.request.urlopen``; ``file://`` URLs work too). Raises ``DataError`` naming
    every mirror's failure, and where to put the files by hand, when a file cannot be got.
    """
    dataset = DatasetName.parse(name)
    if dataset not in CATALOG:
        raise ConfigError(
            f"fetch: dataset: expected one of {[d.value for d in CATALOG]}, found {dataset.value!r}"
        )
    files, mirrors = CATALOG[dataset]
    mirrors = tuple(base_urls) if base_urls else mirrors
    if not isinstance(timeout, (int, float)) or not timeout > 0 or timeout == float("inf"):
        raise ConfigError(f"fetch: timeout: expected a finite number of seconds > 0, found {timeout!r}")
    opener = opener or _default_opener
    data_dir = Path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{data_dir}: data directory: cannot create it ({exc.strerror or exc})") from None
    done = []
    for spec in files:
        result = _verify_local(data_dir, spec)
        if result is None:
            result = _fetch_one(dataset, spec, data_dir, mirrors, opener, timeout, files)
        done.append(result)
        if progress is not None:
            progress(result)
    return FetchReport(dataset.value, data_dir, tuple(done))


def _fetch_one(dataset: DatasetName, spec: RemoteFile, data_dir: Path, mirrors: Sequence[str],
               opener: Opener, timeout: float, files: Sequence[RemoteFile]) -> FetchedFile:
    existed = (data_dir / spec.name).exists()
    failures = []
    for base in mirrors:
        url = _join(base, spec.name)
        try:
            n_bytes = _download(url, spec, data_dir, opener, timeout)
        except _DownloadFailed as exc:
            failures.append(f"{url}: {exc}")
            continue
        except OSError as exc:  # the temporary file itself (disk full, permissions)
            raise DataError(f"{data_dir / spec.name}: cannot write: {exc.strerror or exc}") from None
        action = FetchAction.REPLACED if existed else FetchAction.DOWNLOADED
        return FetchedFile(spec.name, data_dir / spec.name, action, url, "published md5", n_bytes)
    raise DataError(
        f"{dataset.value}: {spec.name}: could not download from any mirror ({'; '.join(failures)}); "
        f"if this machine is offline, download {', '.join(f.name for f in files)} elsewhere "
        f"and copy them into {data_dir}"
    )
