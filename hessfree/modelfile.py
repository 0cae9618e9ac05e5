"""Model files: a trained network in one pickle-free, checksummed file (``.hfm``).

    import hessfree

    trained = hessfree.load_model("digits.hfm")
    trained.predict_proba(X)          # (n, classes) probabilities
    trained.predict(X)                # (n,) arg-max classes
    trained.evaluate(X, y)            # loss, accuracy, confusion matrix

``hessfree train --save-model PATH`` (``fit(..., save_model=PATH)``) writes one; so does
:func:`save_model` for any :class:`~hessfree.models.MLP` and parameter vector.

The format, all integers little-endian::

    magic        8 bytes   89 48 46 4D 0D 0A 1A 0A   ("\\x89HFM\\r\\n\\x1a\\n")
    version      u32       1
    header size  u64       H
    header       H bytes   UTF-8 JSON (below)
    payload size u64       P = n_params · itemsize
    payload      P bytes   θ, little-endian, in the header's dtype (layer after layer,
                           W_l row-major then b_l, as ``MLP`` stores it)
    checksum     32 bytes  SHA-256 of every byte before it

The header: ``format`` ("hessfree-model"), ``layers``, ``activations`` (one name per
hidden layer), ``loss``, ``dtype``, ``n_params``, ``input`` (the input scaling the
training data had: features = stored values / ``divide_by``), ``data`` (the training
data's name, content fingerprint, sizes and evaluation split) and ``training`` (method,
settings, the run's final summary, the hessfree version).

Loading checks, in order: the magic (anything else is "not a hessfree model file"), the
version, the sizes against the file's length (truncation), the checksum (any flipped
byte), the header's fields and that the payload holds exactly the network's parameters,
all finite. Every failure is a :class:`ModelFileError` (exit code 1 on the command line)
naming the file and the problem in one line. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path

import attrs
import numpy as np

from hessfree.atomic import atomic_write, read_regular_or
from hessfree.data.dataset import Dataset, InputScaling
from hessfree.errors import DataError, HessfreeError, InputError
from hessfree.limits import memory_text, physical_memory

MAGIC = b"\x89HFM\r\n\x1a\n"
FORMAT = "hessfree-model"
VERSION = 1
SUFFIX = ".hfm"
_CHECKSUM = 32
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
#: header sizes beyond this are refused before reading (a real header is a few kB)
MAX_HEADER = 16 << 20


class ModelFileError(DataError):
    """A model file is missing, unreadable, corrupt, foreign or of an unsupported version."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@attrs.frozen
class Evaluation:
    """What :meth:`TrainedModel.evaluate` measured on ``n`` labelled samples."""

    n: int
    loss: float  # mean loss per sample (no weight decay)
    errors: int  # misclassified samples
    confusion: np.ndarray  # (classes, classes): row = true class, column = predicted

    @property
    def accuracy(self) -> float:
        return 1.0 - self.error_rate

    @property
    def error_rate(self) -> float:
        return self.errors / self.n if self.n else math.nan

    def per_class_accuracy(self) -> list[float | None]:
        """Recall of each class (None for a class without samples)."""
        totals = self.confusion.sum(axis=1)
        return [None if t == 0 else float(self.confusion[c, c] / t) for c, t in enumerate(totals)]

    def most_confused(self, top: int = 5) -> list[tuple[int, int, int]]:
        """(true, predicted, count) of the largest off-diagonal cells, largest first."""
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        flat = np.argsort(off, axis=None, kind="stable")[::-1][:top]
        out = []
        for index in flat:
            true, predicted = np.unravel_index(index, off.shape)
            if off[true, predicted] > 0:
                out.append((int(true), int(predicted), int(off[true, predicted])))
        return out

    def as_dict(self, confusion: bool = True) -> dict:
        out = dict(n=self.n, loss=self.loss, accuracy=self.accuracy, errors=self.errors,
                   per_class_accuracy=self.per_class_accuracy(),
                   most_confused=[dict(true=t, predicted=p, count=c) for t, p, c in self.most_confused()])
        if confusion:
            out["confusion"] = self.confusion.tolist()
        return out


@attrs.frozen(eq=False)
class TrainedModel:
    """A network and its trained parameters, as a model file holds them.

    ``predict``/``predict_proba``/``outputs``/``evaluate`` take features scaled as in
    training (what ``hessfree.data.load_dataset`` returns); with ``stored=True`` they take
    the values as stored (e.g. MNIST pixels 0..255) and apply ``scaling`` first.
    """

    model: object  # hessfree.models.MLP
    theta: np.ndarray
    scaling: InputScaling = attrs.field(factory=InputScaling)
    data: dict = attrs.field(factory=dict)
    training: dict = attrs.field(factory=dict)
    path: str | None = None

    @property
    def n_inputs(self) -> int:
        return self.model.layers[0]

    @property
    def n_classes(self) -> int:
        return self.model.layers[-1]

    def describe(self) -> str:
        """One line: layers, activations, loss, dtype and how it was trained."""
        m = self.model
        acts = sorted(set(m.activations))
        act = acts[0] if len(acts) == 1 else ",".join(m.activations)
        text = f"layers {'-'.join(map(str, m.layers))} ({act}, {m.loss_kind.value}, {m.dtype})"
        summary = self.training.get("summary") or {}
        if self.training.get("method"):
            unit = "iterations" if self.training.get("unit", "iterations") == "iterations" else "epochs"
            text += f", trained with {self.training['method']} on {self.data.get('name', '?')}"
            if summary.get("iterations") is not None:
                text += f" for {summary['iterations']} {unit}"
        return text

    def features(self, X, *, stored: bool = False, where: str = "X") -> np.ndarray:
        """``X`` checked against the model's input size (and scaled if ``stored``)."""
        X = np.asarray(X)
        if X.ndim == 1 and X.shape[0] == self.n_inputs:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != self.n_inputs:
            raise InputError(
                f"{where}: has shape {X.shape}; the model takes (n, {self.n_inputs}) inputs "
                f"(layers {'-'.join(map(str, self.model.layers))})"
            )
        if X.dtype.kind not in "biuf":
            raise InputError(f"{where}: expected real numbers, found dtype {X.dtype}")
        if stored:
            X = self.scaling.scale(X)
        return np.ascontiguousarray(X, dtype=self.model.dtype)

    def outputs(self, X, *, stored: bool = False) -> np.ndarray:
        """The output layer's values z_L (before the loss's link), chunk by chunk."""
        model = self.model
        batch = model.batch(self.features(X, stored=stored))
        weights = model.unflatten(self.theta)
        Z = np.empty((batch.n, self.n_classes), dtype=model.dtype)
        for start, stop in model.chunk_bounds(batch.n):
            X_part = batch.X[start:stop]
            acts = [X_part] + [np.empty((stop - start, d), dtype=model.dtype) for d in model.layers[1:]]
            model.forward_into(weights, X_part, acts)
            Z[start:stop] = acts[-1]
        return Z

    @property
    def has_probabilities(self) -> bool:
        return self.model.loss_kind.value != "squared_error"

    def predict_proba(self, X, *, stored: bool = False) -> np.ndarray:
        """Class probabilities (float64): softmax of z_L for softmax cross-entropy, the
        logistic σ(z_L) of each output for logistic cross-entropy. A squared-error model has
        no probabilities (InputError; use :meth:`outputs`)."""
        if not self.has_probabilities:
            raise InputError("predict_proba: a squared_error model outputs values, not probabilities; use outputs()")
        Z = self.outputs(X, stored=stored).astype(np.float64)
        if self.model.loss_kind.value == "softmax_cross_entropy":
            Z -= Z.max(axis=1, keepdims=True)
            np.exp(Z, out=Z)
            Z /= Z.sum(axis=1, keepdims=True)
            return Z
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-Z))

    def predict(self, X, *, stored: bool = False) -> np.ndarray:
        """Arg-max class of each row (int64), as training counts errors."""
        return self.model.predict(self.theta, self.features(X, stored=stored))

    def evaluate(self, X, y, *, stored: bool = False) -> Evaluation:
        """Mean loss, errors (counted exactly as training counts them) and the confusion matrix."""
        X = self.features(X, stored=stored)
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise InputError(f"y: expected {X.shape[0]} labels (one per row of X), found shape {y.shape}")
        if y.size and (y.dtype.kind not in "biu" or int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise InputError(f"y: expected integer labels in [0, {self.n_classes}) (the model's classes)")
        batch = self.model.batch(X, y.astype(np.int64))
        loss_sum, wrong = self.model.evaluate(self.theta, batch)
        predicted = self.model.predict(self.theta, batch)
        confusion = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)
        np.add.at(confusion, (batch.labels, predicted), 1)
        n = batch.n
        return Evaluation(n=n, loss=float(loss_sum) / n if n else math.nan, errors=int(wrong), confusion=confusion)

    def save(self, path: str | os.PathLike) -> Path:
        return save_model(path, self.model, self.theta, scaling=self.scaling, data_info=self.data, training=self.training)


# ---------------------------------------------------------------------------- writing
def _data_info(data: Dataset) -> dict:
    return dict(
        name=data.name, fingerprint=data.fingerprint, origin=data.origin, n_features=data.n_features,
        n_classes=data.n_classes, n_train=data.n_train_global, n_evaluation=data.n_test_global,
        evaluation=data.evaluation.value,
    )


def encode(model, theta, *, scaling: InputScaling | None = None, data_info: dict | None = None,
           training: dict | None = None) -> bytes:
    """The bytes of a model file (see the module docstring)."""
    from hessfree import __version__

    theta = model.check_vector(theta, "theta")
    if not np.all(np.isfinite(theta)):
        raise InputError("theta: expected finite parameters, found NaN or inf (a diverged run?)")
    scaling = scaling if scaling is not None else InputScaling()
    header = dict(
        format=FORMAT,
        layers=list(model.layers),
        activations=list(model.activations),
        loss=model.loss_kind.value,
        dtype=str(np.dtype(model.dtype)),
        n_params=int(model.n_params),
        input=scaling.as_dict(),
        data=data_info or {},
        training=dict(training or {}, hessfree=__version__),
    )
    try:
        head = json.dumps(header, sort_keys=True, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InputError(f"model file header: not JSON-serialisable ({exc})") from None
    payload = np.ascontiguousarray(theta, dtype=np.dtype(model.dtype).newbyteorder("<")).tobytes()
    body = b"".join([MAGIC, _U32.pack(VERSION), _U64.pack(len(head)), head, _U64.pack(len(payload)), payload])
    return body + hashlib.sha256(body).digest()


def save_model(path: str | os.PathLike, model, theta, *, data: Dataset | None = None, scaling: InputScaling | None = None,
               data_info: dict | None = None, training: dict | None = None) -> Path:
    """Write ``model`` with parameters ``theta`` to ``path`` atomically; returns the path.

    ``data`` (the training dataset, any rank's shard) supplies the input scaling and the
    data's description; ``scaling``/``data_info`` give them directly. ``training`` is any
    JSON-ready description of the run (method, settings, final summary).
    """
    if data is not None:
        scaling = data.scaling if scaling is None else scaling
        data_info = _data_info(data) if data_info is None else data_info
    blob = encode(model, theta, scaling=scaling, data_info=data_info, training=training)
    path = Path(path)
    try:
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, blob)
    except OSError as exc:
        # the file the error is about (the model file, or a parent that cannot be made)
        where = exc.filename if exc.filename not in (None, str(path)) else path
        raise ModelFileError(f"{where}: cannot write the model file ({exc.strerror or exc})") from None
    return path


# ---------------------------------------------------------------------------- reading
def _fail(path, problem: str) -> ModelFileError:
    return ModelFileError(_one_line(f"{path}: {problem}"))


def decode(blob: bytes, where: str = "model file") -> TrainedModel:
    """A :class:`TrainedModel` from a model file's bytes; ModelFileError naming ``where``."""
    from hessfree.models import MLP

    if len(blob) < len(MAGIC) or blob[: len(MAGIC)] != MAGIC:
        start = blob[:8]
        hint = "empty" if not blob else ("a zip/.npz archive" if start.startswith(b"PK") else f"starts with {start!r}")
        raise _fail(where, f"not a hessfree model file ({hint}; expected the {FORMAT} magic {MAGIC!r})")
    pos = len(MAGIC)
    fixed = _U32.size + _U64.size
    if len(blob) < pos + fixed:
        raise _fail(where, "truncated: the file ends inside its fixed header")
    (version,) = _U32.unpack_from(blob, pos)
    if version != VERSION:
        raise _fail(where, f"{FORMAT} format version {version} is not supported (this hessfree reads version {VERSION})")
    (head_size,) = _U64.unpack_from(blob, pos + _U32.size)
    pos += fixed
    if head_size > MAX_HEADER or len(blob) < pos + head_size + _U64.size + _CHECKSUM:
        raise _fail(where, f"truncated or corrupt: header of {head_size} bytes does not fit in {len(blob)} bytes")
    head = blob[pos: pos + head_size]
    pos += head_size
    (payload_size,) = _U64.unpack_from(blob, pos)
    pos += _U64.size
    if len(blob) != pos + payload_size + _CHECKSUM:
        raise _fail(where, f"truncated or corrupt: {len(blob)} bytes, expected {pos + payload_size + _CHECKSUM} "
                           f"from the sizes it declares")
    body, checksum = blob[:-_CHECKSUM], blob[-_CHECKSUM:]
    if hashlib.sha256(body).digest() != checksum:
        raise _fail(where, "corrupt: SHA-256 checksum mismatch (the file was altered or damaged)")
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail(where, f"corrupt header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _fail(where, f"not a {FORMAT} file (format {header.get('format') if isinstance(header, dict) else None!r})")
    try:
        model = MLP(header["layers"], activation=header["activations"] or "tanh", loss=header["loss"], dtype=header["dtype"])
    except KeyError as exc:
        raise _fail(where, f"header lacks {exc}") from None
    except (HessfreeError, TypeError, ValueError) as exc:
        raise _fail(where, f"invalid network in the header ({exc})") from None
    if header.get("n_params") != model.n_params:
        raise _fail(where, f"header says {header.get('n_params')!r} parameters, layers {model.layers} have {model.n_params}")
    dtype = np.dtype(model.dtype).newbyteorder("<")
    if payload_size != model.n_params * dtype.itemsize:
        raise _fail(where, f"payload of {payload_size} bytes, expected {model.n_params} {model.dtype} parameters "
                           f"({model.n_params * dtype.itemsize} bytes)")
    theta = np.frombuffer(blob, dtype=dtype, count=model.n_params, offset=pos).astype(model.dtype)
    if not np.all(np.isfinite(theta)):
        raise _fail(where, "parameters contain NaN or inf")
    scaling_info = header.get("input") or {}
    try:
        scaling = InputScaling(float(scaling_info.get("divide_by", 1.0)), str(scaling_info.get("stored", "")))
    except (TypeError, ValueError):
        raise _fail(where, f"invalid input scaling {scaling_info!r}") from None
    if not (math.isfinite(scaling.divide_by) and scaling.divide_by > 0):
        raise _fail(where, f"invalid input scaling divide_by={scaling.divide_by!r}")
    return TrainedModel(model=model, theta=theta, scaling=scaling, data=dict(header.get("data") or {}),
                        training=dict(header.get("training") or {}), path=where)


def load_model(path: str | os.PathLike) -> TrainedModel:
    """Read and verify the model file at ``path`` (see the module docstring)."""
    path = Path(path)
    limit = physical_memory() or (1 << 40)
    blob = read_regular_or(path, limit, lambda reason: _fail(path, f"{reason} (expected a model file)"),
                           too_large=f"larger than this machine's memory ({memory_text()}): not a model file "
                           "this machine can load")
    return decode(blob, str(path))


def read_header(path: str | os.PathLike) -> dict:
    """The verified header of a model file (everything but the parameters)."""
    trained = load_model(path)
    return dict(layers=list(trained.model.layers), activations=list(trained.model.activations),
                loss=trained.model.loss_kind.value, dtype=str(trained.model.dtype),
                input=trained.scaling.as_dict(), data=trained.data, training=trained.training)


__all__ = ["Evaluation", "ModelFileError", "TrainedModel", "decode", "encode", "load_model", "read_header", "save_model"]
