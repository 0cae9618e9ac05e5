"""IDX reading: round trips, per-rank reads, and a corpus of malformed files.

Every malformed case must raise ``DataError`` (exit code 1) with a one-line message
naming the file and the field; hypothesis byte mutations of a valid pair may only ever
produce a dataset or that error.
"""

import gzip
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hessfree.data import ShardMode, load_dataset, read_idx_header, read_idx_rows, shard_indices
from hessfree.data import idx as idx_module
from hessfree.data.idx import IDX_TYPES, encode_idx, write_idx
from hessfree.data.mnist import FILE_STEMS
from hessfree.errors import DataError

RNG = np.random.default_rng(7)
TRAIN_IMAGES = RNG.integers(0, 256, size=(13, 4, 3), dtype=np.uint8)
TRAIN_LABELS = RNG.integers(0, 10, size=13, dtype=np.uint8)
TEST_IMAGES = RNG.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
TEST_LABELS = RNG.integers(0, 10, size=5, dtype=np.uint8)
VALID = {
    "train_images": encode_idx(TRAIN_IMAGES),
    "train_labels": encode_idx(TRAIN_LABELS),
    "test_images": encode_idx(TEST_IMAGES),
    "test_labels": encode_idx(TEST_LABELS),
}


def make_dir(root: Path, gz: bool = False, **replace: bytes) -> Path:
    """A directory with the four MNIST files (``replace`` swaps in raw bytes for a role)."""
    root.mkdir(parents=True, exist_ok=True)
    for role, data in {**VALID, **replace}.items():
        name = FILE_STEMS[role] + (".gz" if gz else "")
        (root / name).write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return root


def load(root: Path, **kw):
    return load_dataset("mnist", data_dir=root, **kw)


def expect_error(root: Path, *fragments: str) -> DataError:
    with pytest.raises(DataError) as info:
        load(root)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 1
    for fragment in fragments:
        assert fragment in message, message
    return info.value


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("code", sorted(IDX_TYPES))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_read_round_trip_every_type(tmp_path, code, suffix):
    dtype = np.dtype(IDX_TYPES[code][1]).newbyteorder("=")
    array = (np.arange(60).reshape(5, 3, 4) - 20).astype(dtype)
    path = write_idx(tmp_path / f"a{suffix}", array)
    header, (back,) = read_idx_rows(path, [range(5)], type_code=None)
    assert header.type_code == code and header.dims == (5, 3, 4)
    assert header.compressed == (suffix == ".gz")
    assert back.dtype == dtype and np.array_equal(back, array)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_layout_loads_scaled_pixels(tmp_path, gz):
    data = load(make_dir(tmp_path, gz=gz))
    assert data.n_features == 12 and data.n_classes == 10
    assert np.array_equal(data.X_train, TRAIN_IMAGES.reshape(13, 12) / 255.0)
    assert np.array_equal(data.y_train, TRAIN_LABELS.astype(np.int64))
    assert np.array_equal(data.X_test, TEST_IMAGES.reshape(5, 12) / 255.0)
    assert data.X_train.min() >= 0.0 and data.X_train.max() <= 1.0
    f32 = load(tmp_path, dtype=np.float32)
    assert f32.X_train.dtype == np.float32 and np.allclose(f32.X_train, data.X_train)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("mode", list(ShardMode))
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_rank_shards_reassemble_the_dataset(tmp_path, monkeypatch, gz, mode, size):
    monkeypatch.setattr(idx_module, "CHUNK_BYTES", 25)  # two rows per chunk: exercise chunking
    root = make_dir(tmp_path, gz=gz)
    whole = load(root)
    X = np.empty_like(whole.X_train)
    y = np.empty_like(whole.y_train)
    for rank in range(size):
        part = load(root, rank=rank, size=size, shard=mode)
        rows = list(shard_indices(13, rank, size, mode))
        assert part.n_train_global == 13 and part.n_test_global == 5
        assert list(part.shard.train_rows) == rows
        X[rows], y[rows] = part.X_train, part.y_train
        test_rows = list(shard_indices(5, rank, size, mode))
        assert np.array_equal(part.X_test, whole.X_test[test_rows])
    assert np.array_equal(X, whole.X_train) and np.array_equal(y, whole.y_train)


def test_validation_split_holds_out_the_tail(tmp_path):
    root = make_dir(tmp_path)
    data = load(root, validation=0.25)  # round(0.25 · 13) = 3 held out
    assert data.n_train == 10 and data.n_test == 3
    assert data.evaluation.value == "validation"
    assert np.array_equal(data.X_test, TRAIN_IMAGES[10:].reshape(3, 12) / 255.0)
    part = load(root, validation=0.25, rank=1, size=2, shard="strided")
    assert np.array_equal(part.X_test, TRAIN_IMAGES[[11]].reshape(1, 12) / 255.0)


def test_rank_reads_only_its_rows(tmp_path):
    """O(shard) memory: a rank's peak allocation is far below the whole dataset's size."""
    images = np.random.default_rng(1).integers(0, 256, size=(4000, 28, 28), dtype=np.uint8)
    labels = np.zeros(4000, dtype=np.uint8)
    for gz in (False, True):
        root = make_dir(tmp_path / str(gz), gz=gz, train_images=encode_idx(images), train_labels=encode_idx(labels),
                        test_images=encode_idx(images[:5]))
        tracemalloc.start()
        try:
            part = load(root, rank=7, size=8)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        whole_bytes = images.size * 8  # the whole training set in float64: 25 MB
        assert part.n_train == 500
        assert np.array_equal(part.X_train, images[3500:].reshape(500, 784) / 255.0)
        assert peak < whole_bytes / 3, (gz, peak)


# --------------------------------------------------------------------------- malformed corpus


def header(code: int, *dims: int) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


IMG = VALID["train_images"]
GZ_CAPACITY = ["size", "gzip file can hold"]
#: case -> (files to replace, fragments the message must contain, other fragments for .gz files)
CORPUS = {
    "nonzero leading byte": (dict(train_images=b"\x01" + IMG[1:]), ["train-images-idx3-ubyte", "magic", "not an IDX"], None),
    "second leading byte": (dict(train_images=b"\x00\x08" + IMG[2:]), ["magic", "found 0x00080803"], None),
    "labels given as images": (dict(train_images=VALID["train_labels"]),
                               ["train-images-idx3-ubyte", "magic: expected 0x00000803 (ubyte, 3 dims)",
                                "found 0x00000801", "labels file"], None),
    "images given as labels": (dict(test_labels=VALID["test_images"]),
                               ["t10k-labels-idx1-ubyte", "expected 0x00000801", "images file"], None),
    "unsupported type code": (dict(train_images=b"\x00\x00\x07\x03" + IMG[4:]), ["type code", "found 0x07"], None),
    "float images": (dict(train_images=encode_idx(TRAIN_IMAGES.astype(np.float32))), ["magic", "0x00000D03"], None),
    "wrong number of dimensions": (dict(train_images=encode_idx(TRAIN_IMAGES.reshape(13, 12))),
                                   ["magic", "(ubyte, 2 dims)"], None),
    "zero dimensions": (dict(train_labels=b"\x00\x00\x08\x00"), ["magic", "0 dims"], None),
    "empty file": (dict(train_images=b""), ["train-images-idx3-ubyte", "header", "truncated", "found 0"], None),
    "magic only": (dict(train_images=IMG[:4]), ["header", "truncated", "found 4"], None),
    "header only": (dict(train_images=IMG[:16]), ["size", "truncated", "expected 172", "found 16"], None),
    "one byte short": (dict(train_images=IMG[:-1]), ["size", "truncated", "expected 172", "found 171"], None),
    "trailing bytes": (dict(train_images=IMG + b"\x00"), ["size", "trailing bytes", "expected 172"], None),
    "count mismatch": (dict(train_labels=encode_idx(TRAIN_LABELS[:12])),
                       ["train-labels-idx1-ubyte", "count", "expected 13", "found 12"], None),
    "label out of range": (dict(test_labels=encode_idx(np.array([1, 2, 10, 3, 4], np.uint8))),
                           ["t10k-labels-idx1-ubyte", "label", "[0, 10)", "found 10 at row 2"], None),
    "test image size differs": (dict(test_images=encode_idx(np.zeros((5, 3, 4), np.uint8))),
                                ["t10k-images-idx3-ubyte", "image size", "(4, 3)", "(3, 4)"], None),
    "empty images": (dict(train_images=header(8, 13, 0, 3)), ["image size"], None),
    "overflowing dimensions": (dict(train_images=header(8, 2**32 - 1, 2**32 - 1, 2**32 - 1)),
                               ["size", "truncated", "4294967295×4294967295×4294967295"], GZ_CAPACITY),
    "far larger than the file": (dict(train_images=header(8, 10**6, 28, 28) + bytes(100)),
                                 ["size", "truncated", "1000000×28×28"], GZ_CAPACITY),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
@pytest.mark.parametrize("gz", [False, True])
def test_malformed_file_gives_one_typed_error(tmp_path, case, gz):
    replace, fragments, gz_fragments = CORPUS[case]
    root = make_dir(tmp_path, gz=gz, **replace)
    expect_error(root, *(gz_fragments if gz and gz_fragments else fragments))


def test_hostile_header_is_refused_before_allocating(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header(8, 2**32 - 1, 2**32 - 1, 2**32 - 1)))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="more than a .*-byte gzip file can hold"):
            read_idx_rows(path, [range(0, 2**32 - 1, 7)], ndim=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_corrupt_gzip(tmp_path):
    packed = bytearray(gzip.compress(IMG, mtime=0))
    packed[len(packed) // 2] ^= 0xFF
    root = make_dir(tmp_path, gz=True)
    (root / "train-images-idx3-ubyte.gz").write_bytes(bytes(packed))
    expect_error(root, "train-images-idx3-ubyte.gz")
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(IMG, mtime=0)[:-12])
    expect_error(root, "train-images-idx3-ubyte.gz")


def test_oversized_gzip_stops_at_the_declared_size(tmp_path):
    """A small gzip inflating to 64 MB beyond its header is refused after one extra byte."""
    root = make_dir(tmp_path, gz=True)
    big = gzip.compress(IMG + bytes(64 << 20), compresslevel=1)
    (root / "train-images-idx3-ubyte.gz").write_bytes(big)
    tracemalloc.start()
    try:
        expect_error(root, "train-images-idx3-ubyte.gz", "trailing bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_missing_files_say_where_to_put_them(tmp_path):
    root = make_dir(tmp_path)
    (root / "t10k-labels-idx1-ubyte").unlink()
    err = expect_error(root, "t10k-labels-idx1-ubyte", "hessfree data fetch mnist", str(root))
    assert "train-images-idx3-ubyte.gz" in str(err)
    expect_error(tmp_path / "nowhere", "data directory")


def test_header_reader_reports_sizes(tmp_path):
    path = write_idx(tmp_path / "x.gz", TRAIN_IMAGES)
    h = read_idx_header(path, ndim=3)
    assert (h.n_rows, h.row_shape, h.row_bytes, h.total_bytes) == (13, (4, 3), 12, 172)


# --------------------------------------------------------------------------- byte mutations


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
        st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
        st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, ops) -> bytes:
    data = bytearray(data)
    for op, pos, value in ops:
        pos = pos % (len(data) + 1)
        if op == "set" and pos < len(data):
            data[pos] = value
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data.insert(pos, value)
    return bytes(data)


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(role=st.sampled_from(["train_images", "train_labels"]), ops=mutations, gz=st.booleans(),
       mutate_compressed=st.booleans())
def test_byte_mutations_give_a_dataset_or_a_data_error(role, ops, gz, mutate_compressed):
    with tempfile.TemporaryDirectory() as tmp:
        root = make_dir(Path(tmp), gz=gz)
        target = root / (FILE_STEMS[role] + (".gz" if gz else ""))
        if gz and mutate_compressed:
            target.write_bytes(mutate(target.read_bytes(), ops))
        elif gz:
            target.write_bytes(gzip.compress(mutate(VALID[role], ops), mtime=0))
        else:
            target.write_bytes(mutate(VALID[role], ops))
        try:
            data = load(root, rank=1, size=2)
        except DataError as exc:
            assert "\n" not in str(exc)
            return
        # accepted: then it is a well-formed dataset with sane values
        assert data.X_train.dtype == np.float64 and np.all((data.X_train >= 0) & (data.X_train <= 1))
        assert data.y_train.min(initial=0) >= 0 and data.y_train.max(initial=0) < 10
