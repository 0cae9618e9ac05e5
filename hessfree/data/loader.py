"""``load_dataset``: the one entry point from a dataset name to a rank's validated shard."""

from __future__ import annotations

import enum
import gzip
import hashlib
import json
import os
import threading
from pathlib import Path

import attrs
import numpy as np

from hessfree.data import digits as _digits
from hessfree.data import mnist as _mnist
from hessfree.data import synthetic as _synthetic
from hessfree.data.dataset import Dataset, InputScaling
from hessfree.data.digits import load_digits
from hessfree.data.idx import GZIP_MAGIC
from hessfree.data.mnist import IdxPairSource
from hessfree.data.npz import open_npz
from hessfree.data.sharding import EvalSplit, ShardInfo, ShardMode, check_int
from hessfree.data.source import ArraySource, DatasetInfo, Source
from hessfree.data.synthetic import TeacherConfig, TeacherSource, timit_like_config
from hessfree.errors import ConfigError, DataError
from hessfree.limits import exceeds_memory, memory_text, size_text
from hessfree.validate import integer, real


class DatasetName(enum.Enum):
    """The datasets ``--dataset`` accepts; values are the command-line spellings."""

    DIGITS = "digits"
    MNIST = "mnist"
    FASHION_MNIST = "fashion-mnist"
    SYNTHETIC = "synthetic"
    TIMIT_LIKE = "timit-like"
    NPZ = "npz"

    @classmethod
    def parse(cls, name: "DatasetName | str") -> "DatasetName":
        if isinstance(name, cls):
            return name
        try:
            return cls(str(name).strip().lower())
        except ValueError:
            raise ConfigError(
                f"dataset: expected one of {[n.value for n in cls]}, found {name!r}"
            ) from None


GENERATORS = (DatasetName.SYNTHETIC, DatasetName.TIMIT_LIKE)
#: options only the generators take (beyond n_features, n_classes, samples, seed)
GENERATOR_OPTIONS = ("test_fraction", "hidden")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _optional_int(name: str, value, minimum: int = 1) -> int | None:
    return None if value is None else check_int(name, value, minimum)


def _check_dtype(dtype) -> np.dtype:
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ConfigError(f"dtype: expected float32 or float64, found {dtype!r}") from None
    if dtype not in FLOAT_DTYPES:
        raise ConfigError(f"dtype: expected float32 or float64, found {dtype}")
    return dtype


def _check_validation(validation) -> float:
    return real("validation", validation, low=0, high=1, high_open=True)


def _npz_path(data_dir, path) -> Path:
    target = path if path is not None else data_dir
    if target is None:
        raise ConfigError("npz: path: expected path= (or --data-dir) naming a .npz file, found nothing")
    target = Path(target)
    if target.is_dir():
        raise DataError(f"npz: path: expected a .npz file, found the directory {target}")
    return target


def open_source(
    name: DatasetName | str,
    *,
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    seed: int = 0,
    n_features: int | None = None,
    n_classes: int | None = None,
    samples: int | None = None,
    **options,
) -> Source:
    """Open a dataset's storage and validate its metadata, reading no samples.

    For the generators ``n_features``, ``n_classes``, ``samples`` (total, train + test),
    ``seed`` and the options ``test_fraction`` and ``hidden`` (teacher width) define the
    data. For stored data ``n_features`` and ``n_classes`` are expectations, checked.
    """
    name = DatasetName.parse(name)
    n_features = _optional_int("n_features", n_features)
    n_classes = _optional_int("n_classes", n_classes)
    samples = _optional_int("samples", samples)
    unknown = sorted(set(options) - set(GENERATOR_OPTIONS))
    if unknown or (options and name not in GENERATORS):
        raise ConfigError(
            f"{name.value}: options: expected {'' if name in GENERATORS else 'none; the generators take '}"
            f"{list(GENERATOR_OPTIONS)}, found {sorted(options)}"
        )
    if name in GENERATORS:
        seed = integer("seed", seed, 0)
        sizes = dict(n_features=n_features, n_classes=n_classes, n_samples=samples, **options)
        if name is DatasetName.TIMIT_LIKE:
            cfg = timit_like_config(seed, **sizes)
        else:
            cfg = TeacherConfig(seed=seed, **{k: v for k, v in sizes.items() if v is not None})
        return TeacherSource(name.value, cfg)
    if name is DatasetName.DIGITS:
        d = load_digits()
        source: Source = ArraySource("digits", d.X_train, d.y_train, d.n_classes, d.X_test, d.y_test,
                                     origin="embedded")
    elif name is DatasetName.NPZ:
        source = open_npz(_npz_path(data_dir, path), n_classes)
    else:
        if data_dir is None:
            raise ConfigError(
                f"{name.value}: data_dir: expected the directory holding the four IDX files "
                f"(--data-dir; `hessfree data fetch {name.value} --data-dir DIR` downloads them), found nothing"
            )
        source = IdxPairSource(name.value, data_dir)
    info = source.info
    if n_features is not None and n_features != info.n_features:
        raise DataError(f"{info.name} ({info.origin}): features: expected {n_features}, found {info.n_features}")
    if n_classes is not None and n_classes < info.n_classes:
        raise DataError(
            f"{info.name} ({info.origin}): classes: expected at most {n_classes}, found {info.n_classes}"
        )
    if samples is not None and samples > info.n_train:
        raise DataError(
            f"{info.name} ({info.origin}): samples: expected at most the {info.n_train} training samples, "
            f"found {samples}"
        )
    return source


#: bump when the fingerprint's definition changes (old checkpoints are then refused by name)
FINGERPRINT_VERSION = 1
_HASH_CHUNK = 1 << 20
_FINGERPRINTS: dict[tuple, str] = {}
_FINGERPRINT_LOCK = threading.Lock()


def input_scaling(name: DatasetName | str) -> InputScaling:
    """How ``load_dataset`` turns the stored values of dataset ``name`` into features."""
    name = DatasetName.parse(name)
    if name is DatasetName.DIGITS:
        return InputScaling(_digits.PIXEL_MAX, f"pixel intensities 0..{_digits.PIXEL_MAX:g} (8x8 images)")
    if name in (DatasetName.MNIST, DatasetName.FASHION_MNIST):
        return InputScaling(_mnist.PIXEL_MAX, f"IDX pixel values 0..{_mnist.PIXEL_MAX:g} (28x28 images)")
    if name is DatasetName.NPZ:
        return InputScaling(1.0, "the .npz archive's X as stored (no scaling)")
    return InputScaling(1.0, "generated N(0, I) features (no scaling)")


def _file_stats(paths) -> tuple:
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((str(Path(path).resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _hash_idx_file(h, header) -> None:
    """The decompressed bytes of an IDX file (header and items): a plain file and its
    ``.gz`` have one fingerprint. Reads exactly the size the validated header declares."""
    with open(header.path, "rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        left = header.total_bytes
        while left:
            block = stream.read(min(_HASH_CHUNK, left))
            if not block:
                raise DataError(f"{header.path.name}: truncated while computing its fingerprint")
            h.update(block)
            left -= len(block)


def _hash_rows(h, read, n: int, dtype=np.float64, chunk_rows: int = 65536) -> None:
    for lo in range(0, n, chunk_rows):
        [(X, y)] = read([range(lo, min(n, lo + chunk_rows))], dtype)
        h.update(np.ascontiguousarray(X, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(y, dtype="<i8").tobytes())


def source_fingerprint(source: Source) -> str:
    """SHA-256 (hex) identifying the content of an opened dataset, before ``samples`` and
    ``validation`` select from it.

    Generated data is identified by the generator's parameters, IDX files by their
    decompressed bytes, in-memory data (the embedded digits, an ``.npz`` archive) by its
    arrays. Every rank reads the same bytes, so the fingerprint is the same on every rank
    and for any rank count, and a copy of the same files in another directory has the same
    fingerprint. Cached per process (by path, size and modification time for files).
    """
    info = source.info
    if isinstance(source, TeacherSource):
        parameters = dict(attrs.asdict(source.cfg), block_rows=_synthetic.BLOCK_ROWS,
                          calibration_rows=_synthetic.CALIBRATION_ROWS)
        key = ("generated", info.name, json.dumps(parameters, sort_keys=True))
    elif isinstance(source, IdxPairSource):
        key = ("idx", info.name, _file_stats(source.paths[role] for role in _mnist.FILE_STEMS))
    else:
        key = None  # in memory already: hashing its arrays is the cheap part of loading it
    if key is not None:
        with _FINGERPRINT_LOCK:
            if key in _FINGERPRINTS:
                return _FINGERPRINTS[key]
    h = hashlib.sha256(f"hessfree-data-fingerprint-v{FINGERPRINT_VERSION}\n".encode())
    h.update(json.dumps(dict(name=info.name, n_features=info.n_features, n_classes=info.n_classes,
                             n_train=info.n_train, n_test=info.n_test), sort_keys=True).encode())
    if isinstance(source, TeacherSource):
        h.update(key[2].encode())
    elif isinstance(source, IdxPairSource):
        for role in _mnist.FILE_STEMS:
            h.update(role.encode())
            _hash_idx_file(h, source.headers[role])
    else:
        _hash_rows(h, source.read_train, info.n_train)
        _hash_rows(h, source.read_test, info.n_test)
    value = h.hexdigest()
    if key is not None:
        with _FINGERPRINT_LOCK:
            _FINGERPRINTS[key] = value
    return value


def dataset_fingerprint(name: DatasetName | str, **kwargs) -> str:
    """:func:`source_fingerprint` of the dataset ``open_source(name, **kwargs)`` opens."""
    return source_fingerprint(open_source(name, **kwargs))


def dataset_info(name: DatasetName | str, **kwargs) -> DatasetInfo:
    """Global sizes of a dataset from its metadata (headers, generator parameters) only."""
    return open_source(name, **kwargs).info


def load_dataset(
    name: DatasetName | str,
    *,
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    dtype=np.float64,
    rank: int = 0,
    size: int = 1,
    shard: ShardMode = ShardMode.CONTIGUOUS,
    validation: float = 0.0,
    seed: int = 0,
    n_features: int | None = None,
    n_classes: int | None = None,
    samples: int | None = None,
    **options,
) -> Dataset:
    """Rank ``rank``'s shard of dataset ``name`` among ``size`` ranks, validated.

    With ``rank=0, size=1`` this is the whole dataset. The result's ``X_test``/``y_test``
    are the rank's shard of the evaluation set: the test set, or, when ``validation > 0``,
    the last ``round(validation·n)`` training samples (held out; the test set is then not
    read). ``dataset.shard`` records the global counts and this rank's global row indices.
    For files, ``samples`` keeps only the first ``samples`` training samples. Raises
    ``ConfigError`` for bad arguments and ``DataError`` for bad data, identically on
    every rank (all checks depend on global quantities only).
    """
    dtype = _check_dtype(dtype)
    validation = _check_validation(validation)
    if not isinstance(shard, ShardMode):
        try:
            shard = ShardMode(shard)
        except ValueError:
            raise ConfigError(f"shard: expected one of {[m.value for m in ShardMode]}, found {shard!r}") from None
    source = open_source(name, data_dir=data_dir, path=path, seed=seed, n_features=n_features,
                         n_classes=n_classes, samples=samples, **options)
    info = source.info
    n_train = info.n_train
    if samples is not None and DatasetName.parse(name) not in GENERATORS:
        n_train = samples
    n_val = int(round(validation * n_train))
    if validation > 0 and not 1 <= n_val < n_train:
        raise ConfigError(
            f"validation: a fraction {validation} of {n_train} training samples gives {n_val} "
            f"validation samples; expected between 1 and {n_train - 1}"
        )
    n_fit = n_train - n_val
    if n_val:
        evaluation, n_eval = EvalSplit.VALIDATION, n_val
    else:
        evaluation = EvalSplit.TEST if info.n_test else EvalSplit.NONE
        n_eval = info.n_test
    layout = ShardInfo.for_rank(n_fit, n_eval, rank, size, shard, evaluation, what=info.name)
    _check_shard_memory(DatasetName.parse(name), info, layout, dtype, samples)
    if n_val:
        # one pass over the training files: this rank's training rows and validation rows
        held_out = layout.test_rows
        (X, y), (X_eval, y_eval) = source.read_train(
            [layout.train_rows, range(n_fit + held_out.start, n_fit + held_out.stop, held_out.step)], dtype
        )
    else:
        [(X, y)] = source.read_train([layout.train_rows], dtype)
        X_eval = y_eval = None
        if info.n_test:
            [(X_eval, y_eval)] = source.read_test([layout.test_rows], dtype)
    return Dataset(
        name=info.name,
        X_train=X,
        y_train=y,
        n_classes=info.n_classes,
        X_test=X_eval,
        y_test=y_eval,
        shard=layout,
        origin=info.origin,
        fingerprint=source_fingerprint(source),
        scaling=input_scaling(name),
    )


def _check_shard_memory(name: DatasetName, info: DatasetInfo, layout: ShardInfo, dtype: np.dtype,
                        samples: int | None) -> None:
    """Refuse, before reading a row, a shard that cannot fit in this machine's memory
    (features in ``dtype`` and int64 labels; Python ints, so no size overflows)."""
    rows = len(layout.train_rows) + len(layout.test_rows)
    need = rows * (info.n_features * np.dtype(dtype).itemsize + 8)
    if not exceeds_memory(need):
        return
    what = (f"this rank's {rows:,} rows × {info.n_features:,} features need {size_text(need)} in "
            f"{np.dtype(dtype).name} ({memory_text()})")
    if name in GENERATORS:
        raise ConfigError(f"samples: {samples:,} generated samples are too many: {what}; use fewer samples or more ranks"
                          if samples is not None else f"{info.name}: size: {what}")
    raise DataError(f"{info.name} ({info.origin}): size: {what}; use --samples, more ranks or float32")


def check_fits(dataset: Dataset, n_inputs: int, n_classes: int) -> None:
    """Raise ``DataError`` unless ``dataset`` fits a model with these input and output sizes."""
    n_inputs = _optional_int("n_inputs", n_inputs)
    n_classes = _optional_int("n_classes", n_classes)
    where = f"{dataset.name} ({dataset.origin})" if dataset.origin else dataset.name
    if dataset.n_features != n_inputs:
        raise DataError(
            f"{where}: features: expected {n_inputs} (the model's input size), found {dataset.n_features}"
        )
    if dataset.n_classes > n_classes:
        raise DataError(
            f"{where}: classes: expected at most {n_classes} (the model's outputs), found {dataset.n_classes}"
        )
    for split, y in (("train", dataset.y_train), ("test", dataset.y_test)):
        if y is not None and y.size and int(y.max()) >= n_classes:
            raise DataError(
                f"{where}: {split} labels: expected values in [0, {n_classes}), found {int(y.max())}"
            )
