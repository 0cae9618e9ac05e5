"""A validating reader for IDX files (the MNIST format), plain or gzip-compressed.

Layout: a 4-byte magic ``00 00 TT DD`` (two zero bytes, a type code ``TT``, the number
of dimensions ``DD``), then ``DD`` big-endian uint32 sizes, then the items, big-endian,
row-major. The first dimension counts samples ("rows").

Every size is computed with Python ints and compared with what the file can hold before
anything is allocated. Rows are streamed in chunks of about ``CHUNK_BYTES`` and only the
requested rows are kept, so a rank reading its shard needs O(shard) memory. Plain files
are checked against their exact size up front and unread rows are seeked over; gzip files
are decompressed as a stream that stops at the declared size plus one byte (to detect
trailing data), so a gzip bomb is never inflated further than the header claims.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import attrs
import numpy as np

from hessfree.data.sharding import restrict
from hessfree.errors import DataError
from hessfree.limits import exceeds_memory, memory_text, size_text

#: IDX type code -> (name, big-endian numpy dtype)
IDX_TYPES: dict[int, tuple[str, str]] = {
    0x08: ("ubyte", ">u1"),
    0x09: ("sbyte", ">i1"),
    0x0B: ("int16", ">i2"),
    0x0C: ("int32", ">i4"),
    0x0D: ("float32", ">f4"),
    0x0E: ("float64", ">f8"),
}
UBYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"
#: deflate cannot expand data by more than ~1032:1; a header promising more than this
#: many bytes per compressed byte is refused before anything is decompressed
MAX_GZIP_RATIO = 1100
GZIP_SLACK = 1 << 16
CHUNK_BYTES = 1 << 20


def describe_magic(type_code: int, ndim: int) -> str:
    """``0x00000803 (ubyte, 3 dims)``-style description of a magic number."""
    kind = IDX_TYPES.get(type_code, ("unknown type",))[0]
    dims = f"{ndim} dim" if ndim == 1 else f"{ndim} dims"
    return f"0x0000{type_code:02X}{ndim:02X} ({kind}, {dims})"


@attrs.frozen
class IdxHeader:
    """The parsed header of one IDX file."""

    path: Path
    type_code: int
    dims: tuple[int, ...]
    compressed: bool
    file_bytes: int

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(IDX_TYPES[self.type_code][1])

    @property
    def n_rows(self) -> int:
        return self.dims[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.dims[1:]

    @property
    def row_items(self) -> int:
        items = 1
        for d in self.dims[1:]:
            items *= d  # Python int: never overflows
        return items

    @property
    def row_bytes(self) -> int:
        return self.row_items * self.dtype.itemsize

    @property
    def header_bytes(self) -> int:
        return 4 + 4 * len(self.dims)

    @property
    def payload_bytes(self) -> int:
        return self.n_rows * self.row_bytes

    @property
    def total_bytes(self) -> int:
        """Exact size the (decompressed) file must have."""
        return self.header_bytes + self.payload_bytes


def _open(path: Path) -> tuple[BinaryIO, bool, int]:
    """Open ``path`` for reading, transparently decompressing gzip (detected by content)."""
    try:
        size = path.stat().st_size
        raw = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
    except OSError as exc:
        raw.close()
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if compressed:
        raw.close()
        try:
            return gzip.open(path, "rb"), True, size
        except OSError as exc:
            raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return raw, False, size


class _Stream:
    """Reads and skips exactly-sized pieces, turning every failure into a DataError."""

    def __init__(self, path: Path, fh: BinaryIO, compressed: bool) -> None:
        self.path, self.fh, self.compressed = path, fh, compressed
        self.position = 0  # bytes of (decompressed) content consumed so far

    def _fail(self, exc: BaseException) -> DataError:
        if self.compressed:
            return DataError(f"{self.path.name}: gzip: corrupt compressed data ({exc or type(exc).__name__})")
        return DataError(f"{self.path.name}: cannot read: {exc}")

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at end of file."""
        try:
            data = self.fh.read(n)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise self._fail(exc) from None
        self.position += len(data)
        return data

    def read_exact(self, n: int, what: str, expected_total: int) -> bytes:
        data = self.read(n)
        if len(data) != n:
            unit = "decompressed bytes" if self.compressed else "bytes"
            raise DataError(
                f"{self.path.name}: {what}: file truncated: expected {expected_total} {unit}, "
                f"found {self.position}"
            )
        return data

    def skip(self, n: int, what: str, expected_total: int) -> None:
        if not self.compressed:
            self.fh.seek(n, os.SEEK_CUR)  # plain files: size already checked exactly
            self.position += n
            return
        while n > 0:  # gzip: decompress and discard, one bounded chunk at a time
            step = min(n, CHUNK_BYTES)
            self.read_exact(step, what, expected_total)
            n -= step


def _parse_header(path: Path, stream: _Stream, compressed: bool, file_bytes: int,
                  type_code: int | None, ndim: int | None) -> IdxHeader:
    name = path.name
    magic = stream.read(4)
    if len(magic) < 4:
        raise DataError(f"{name}: header: file truncated: expected at least 4 bytes, found {len(magic)}")
    expected = (
        describe_magic(type_code, ndim) if type_code is not None and ndim is not None else "0x0000TTDD"
    )
    found_code, found_ndim = magic[2], magic[3]
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(f"{name}: magic: expected {expected}, found 0x{magic.hex().upper()} (not an IDX file)")
    if found_code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise DataError(f"{name}: type code: expected one of {known}, found 0x{found_code:02X}")
    if (type_code is not None and found_code != type_code) or (ndim is not None and found_ndim != ndim):
        hint = ""
        if ndim is not None and ndim > 1 and found_ndim == 1:
            hint = "; this looks like a labels file"
        elif ndim == 1 and found_ndim > 1:
            hint = "; this looks like an images file"
        raise DataError(
            f"{name}: magic: expected {expected}, found {describe_magic(found_code, found_ndim)}{hint}"
        )
    if found_ndim == 0:
        raise DataError(f"{name}: dimensions: expected at least 1, found 0")
    raw_dims = stream.read(4 * found_ndim)
    if len(raw_dims) < 4 * found_ndim:
        raise DataError(
            f"{name}: header: file truncated: expected {4 + 4 * found_ndim} header bytes, "
            f"found {4 + len(raw_dims)}"
        )
    dims = tuple(int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(found_ndim))
    header = IdxHeader(path, found_code, dims, compressed, file_bytes)
    _check_declared_size(header)
    return header


def _check_declared_size(header: IdxHeader) -> None:
    """Refuse sizes the file cannot hold, before any allocation."""
    name, total = header.path.name, header.total_bytes
    shape = "×".join(str(d) for d in header.dims)
    if not header.compressed:
        if header.file_bytes < total:
            raise DataError(
                f"{name}: size: file truncated: header declares {shape} items, expected {total} bytes, "
                f"found {header.file_bytes}"
            )
        if header.file_bytes > total:
            raise DataError(
                f"{name}: size: trailing bytes: header declares {shape} items, expected {total} bytes, "
                f"found {header.file_bytes}"
            )
    elif total > MAX_GZIP_RATIO * header.file_bytes + GZIP_SLACK:
        raise DataError(
            f"{name}: size: header declares {shape} items ({total} bytes), more than a "
            f"{header.file_bytes}-byte gzip file can hold"
        )


def read_idx_header(path: str | os.PathLike, *, type_code: int | None = UBYTE,
                    ndim: int | None = None) -> IdxHeader:
    """Parse and validate the header of ``path`` (expected type code and rank if given)."""
    path = Path(path)
    fh, compressed, file_bytes = _open(path)
    with fh:
        return _parse_header(path, _Stream(path, fh, compressed), compressed, file_bytes, type_code, ndim)


def _check_selection(name: str, rows: range, n: int) -> None:
    if rows.step < 1 or (len(rows) and (rows.start < 0 or rows[-1] >= n)):
        raise DataError(f"{name}: rows: expected indices in [0, {n}), found {rows}")


def read_idx_rows(
    path: str | os.PathLike,
    selections: Sequence[range],
    *,
    type_code: int | None = UBYTE,
    ndim: int | None = None,
    inspect: Callable[[np.ndarray, int], None] | None = None,
) -> tuple[IdxHeader, list[np.ndarray]]:
    """Validate ``path`` completely and return the rows picked by each selection.

    ``selections`` are increasing ranges of row indices; the result holds, for each, an
    array of shape ``(len(selection), *row_shape)`` in native byte order. ``inspect``, if
    given, sees every chunk ``(rows, first_row_index)`` of the file, read or not, so a
    check over all rows (label range, finiteness) gives the same verdict on every rank.
    Nothing is returned unless the whole file is well-formed.
    """
    path = Path(path)
    fh, compressed, file_bytes = _open(path)
    with fh:
        stream = _Stream(path, fh, compressed)
        header = _parse_header(path, stream, compressed, file_bytes, type_code, ndim)
        for rows in selections:
            _check_selection(path.name, rows, header.n_rows)
        _check_memory(header, selections)
        parts = _gather(stream, header, selections, inspect)
        if compressed and stream.read(1):
            raise DataError(
                f"{path.name}: size: trailing bytes: expected {header.total_bytes} decompressed bytes, "
                f"found more"
            )
    native = header.dtype.newbyteorder("=")
    out = []
    for rows, chunks in zip(selections, parts):
        joined = np.concatenate(chunks) if chunks else np.empty((0, header.row_items), dtype=header.dtype)
        out.append(joined.astype(native, copy=False).reshape((len(rows), *header.row_shape)))
    return header, out


def _check_memory(header: IdxHeader, selections: Sequence[range]) -> None:
    """Refuse, before reading, selected rows that cannot fit in this machine's memory."""
    need = sum(len(rows) for rows in selections) * header.row_bytes
    if exceeds_memory(need):
        raise DataError(
            f"{header.path.name}: size: the {sum(len(r) for r in selections):,} rows asked for need "
            f"{size_text(need)} ({memory_text()})"
        )


def _gather(stream: _Stream, header: IdxHeader, selections: Sequence[range],
            inspect: Callable[[np.ndarray, int], None] | None) -> list[list[np.ndarray]]:
    """Stream the payload chunk by chunk and keep the selected rows (copies, O(chunk) extra)."""
    n, row_bytes, total = header.n_rows, header.row_bytes, header.total_bytes
    parts: list[list[np.ndarray]] = [[] for _ in selections]
    if row_bytes == 0:
        # zero-sized rows carry no bytes: the selected rows are all empty
        return [[np.empty((len(rows), 0), dtype=header.dtype)] for rows in selections]
    rows_per_chunk = max(1, CHUNK_BYTES // row_bytes)
    for lo in range(0, n, rows_per_chunk):
        hi = min(n, lo + rows_per_chunk)
        hits = [restrict(rows, lo, hi) for rows in selections]
        if inspect is None and not any(hits):
            stream.skip((hi - lo) * row_bytes, "size", total)
            continue
        data = stream.read_exact((hi - lo) * row_bytes, "size", total)
        block = np.frombuffer(data, dtype=header.dtype).reshape(hi - lo, header.row_items)
        if inspect is not None:
            inspect(block, lo)
        for part, hit in zip(parts, hits):
            if hit:
                part.append(block[hit.start - lo: hit.stop - lo: hit.step].copy())
    return parts


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (one of the six IDX item types, at least 1-D)."""
    array = np.asarray(array)
    for code, (_, be) in IDX_TYPES.items():
        if np.dtype(be).newbyteorder("=") == array.dtype.newbyteorder("="):
            break
    else:
        raise DataError(f"encode_idx: dtype: expected one of {[n for n, _ in IDX_TYPES.values()]}, found {array.dtype}")
    if array.ndim < 1 or array.ndim > 255 or any(d >= 1 << 32 for d in array.shape):
        raise DataError(f"encode_idx: shape: expected 1..255 dimensions below 2**32, found {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_TYPES[code][1]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``."""
    path = Path(path)
    data = encode_idx(array)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
