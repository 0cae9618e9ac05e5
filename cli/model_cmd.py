"""``hessfree evaluate`` and ``hessfree predict``: use a model file written by ``train --save-model``.

Exit codes: 0 ok, 1 runtime or data error (a missing, corrupt or foreign model file,
inputs that do not fit the model, unreadable data), 2 usage error. Errors are one line
``error: ...`` on stderr (``--debug`` adds the traceback of an internal error).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import click
import numpy as np

from hessfree.cli.errors import reported
from hessfree.errors import ConfigError, DataError

#: the text output prints the whole confusion matrix up to this many classes
MATRIX_CLASSES = 12
#: the JSON output holds the whole confusion matrix up to this many classes
JSON_MATRIX_CLASSES = 100
SPLITS = ("auto", "test", "train", "validation")


def _guard(debug: bool, body) -> None:
    with reported(debug):
        body()



def _dataset_choices() -> list[str]:
    from hessfree.data.loader import DatasetName

    return [d.value for d in DatasetName]


# ---------------------------------------------------------------------------- evaluate
def load_split(trained, dataset: str | None, data_dir, split: str, samples, seed, validation):
    """(Dataset, X, y, split name, notes) for evaluating ``trained`` (defaults from its run)."""
    from hessfree.data import load_dataset

    settings = trained.training.get("settings") or {}
    trained_on = trained.data.get("name")
    name = dataset or trained_on or "digits"
    same = name == trained_on
    notes = []
    if same:  # the run's own data: default to the settings it used
        data_dir = data_dir if data_dir is not None else settings.get("data_dir")
        samples = samples if samples is not None else settings.get("samples")
        seed = seed if seed is not None else (settings.get("train") or {}).get("seed")
        validation = validation if validation is not None else settings.get("validation")
    validation = validation or 0.0
    if split == "validation" and not validation:
        raise ConfigError("--split validation: needs --validation FRACTION (the run held out none)")
    kwargs = dict(data_dir=data_dir, dtype=trained.model.dtype, seed=seed or 0, samples=samples)
    if split in ("train", "validation"):
        data = load_dataset(name, validation=validation, **kwargs)
        X, y = (data.X_train, data.y_train) if split == "train" else (data.X_test, data.y_test)
    else:
        data = load_dataset(name, **kwargs)
        if data.has_test and data.n_test:
            X, y, split = data.X_test, data.y_test, "test"
        elif split == "test":
            raise DataError(f"{name}: has no test set; use --split train (or --split validation with --validation)")
        else:
            X, y, split = data.X_train, data.y_train, "train"
            notes.append(f"{name} has no test set: evaluated on the training split")
    if data.n_features != trained.n_inputs:
        raise DataError(
            f"{name}: samples have {data.n_features} features, shape {X.shape}; the model takes (n, {trained.n_inputs}) "
            f"inputs (layers {'-'.join(map(str, trained.model.layers))})"
        )
    if data.n_classes > trained.n_classes:
        raise DataError(f"{name}: has {data.n_classes} classes; the model predicts {trained.n_classes}")
    return data, X, y, split, notes


def _same_data(trained, data) -> bool | None:
    fingerprint = trained.data.get("fingerprint")
    if not fingerprint or not data.fingerprint:
        return None
    return fingerprint == data.fingerprint


def _matrix(confusion: np.ndarray) -> list[str]:
    n = confusion.shape[0]
    width = max(3, len(str(int(confusion.max()))) + 1, len(str(n - 1)) + 1)
    lines = ["true\\pred " + "".join(str(c).rjust(width) for c in range(n))]
    for t in range(n):
        cells = "".join(("." if v == 0 else str(int(v))).rjust(width) for v in confusion[t])
        lines.append(f"{str(t).rjust(9)} {cells}")
    return lines


@click.command("evaluate", epilog="Exit codes: 0 ok, 1 runtime or data error (bad model file, data that do not fit), 2 usage error.")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="Model file written by hessfree train --save-model.")
@click.option("--dataset", type=click.Choice(_dataset_choices()), help="Dataset to evaluate on (default: the one the model was trained on).")
@click.option("--data-dir", help="Directory of the dataset files (mnist, fashion-mnist) or the .npz path (default: the training run's).")
@click.option("--split", type=click.Choice(SPLITS), default="auto", show_default=True,
              help="Which samples: the test set (auto: the test set, else the training set), the training set, or the held-out validation split.")
@click.option("--samples", type=int, help="As in train (default: the training run's, on its own dataset).")
@click.option("--seed", type=int, help="Generator seed of synthetic/timit-like (default: the training run's).")
@click.option("--validation", type=float, help="Held-out fraction, for --split train/validation (default: the training run's).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--debug", is_flag=True, help="Print the traceback of an internal error.")
def evaluate_command(model_path, dataset, data_dir, split, samples, seed, validation, as_json, debug) -> None:
    """Loss, accuracy and a confusion summary of a saved model on a dataset."""

    def body():
        from hessfree.modelfile import load_model

        trained = load_model(model_path)
        data, X, y, used, notes = load_split(trained, dataset, data_dir, split, samples, seed, validation)
        result = trained.evaluate(X, y)
        same = _same_data(trained, data)
        if as_json:
            out = dict(model=str(model_path), dataset=data.name, split=used, same_data_as_training=same,
                       **result.as_dict(confusion=trained.n_classes <= JSON_MATRIX_CLASSES),
                       training=trained.training.get("summary"), notes=notes)
            click.echo(json.dumps(out, allow_nan=False, default=lambda v: None))
            return
        click.echo(f"model: {model_path}, {trained.describe()}")
        origin = {True: " (the data it was trained on)", False: " (not the data it was trained on)"}.get(same, "")
        click.echo(f"data: {data.name} {used} split, {result.n:,} samples{origin}")
        for note in notes:
            click.echo(f"note: {note}")
        click.echo(f"loss {result.loss:.6f} (mean per sample)  accuracy {result.accuracy:.4f} "
                   f"({result.errors:,} of {result.n:,} wrong)")
        if trained.n_classes <= MATRIX_CLASSES:
            click.echo("confusion (rows: true class, columns: predicted, . = 0):")
            for line in _matrix(result.confusion):
                click.echo(line)
        else:
            per_class = [(a, c) for c, a in enumerate(result.per_class_accuracy()) if a is not None]
            worst = ", ".join(f"{c}: {a:.2f}" for a, c in sorted(per_class)[:5])
            click.echo(f"worst classes (accuracy): {worst}")
        pairs = result.most_confused()
        click.echo("most confused (true→predicted ×count): " + (", ".join(f"{t}→{p} ×{c}" for t, p, c in pairs) or "none"))

    _guard(debug, body)


# ---------------------------------------------------------------------------- predict
def read_inputs(path: str, key: str | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(X, y or None, the key of X) from an ``.npz`` (or ``.npy``) file, without pickle."""
    from hessfree.data.npz import _load_archive

    p = Path(path)
    try:
        with open(p, "rb") as fh:
            single = fh.read(6) == b"\x93NUMPY"
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if single:  # a plain .npy array: small header, memory-mapped, so no allocation before the check
        try:
            X = np.load(p, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{p.name}: expected a pickle-free .npy array ({exc})") from None
        from hessfree.limits import exceeds_memory, memory_text, size_text

        if exceeds_memory(X.nbytes):
            raise DataError(f"{p.name}: shape {X.shape} needs {size_text(X.nbytes)}, more than fits in memory ({memory_text()})")
        return np.array(X), None, "array"
    arrays = _load_archive(p, allowed=None)  # sizes checked against memory before loading
    if key is None:
        key = "X" if "X" in arrays else (next(iter(arrays)) if len(arrays) == 1 else None)
        if key is None:
            raise DataError(f"{p.name}: expected an array named X (or --key NAME), found {sorted(arrays)}")
    elif key not in arrays:
        raise DataError(f"{p.name}: no array named {key!r}; found {sorted(arrays)}")
    y = arrays.get("y") if key == "X" else arrays.get("y_test") if key == "X_test" else None
    return arrays[key], y, key


@click.command("predict", epilog="Exit codes: 0 ok, 1 runtime or data error (bad model file, inputs that do not fit), 2 usage error.")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="Model file written by hessfree train --save-model.")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False), help=".npz with the inputs as X (samples × features); a y beside it is scored.")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False), help=".npz to write: classes, and probabilities (or outputs for squared_error).")
@click.option("--key", help="Name of the inputs array in --input (default X, or the only array).")
@click.option("--stored-values", is_flag=True,
              help="The inputs are values as the dataset stores them (e.g. pixels 0..255): scale them as training did.")
@click.option("--debug", is_flag=True, help="Print the traceback of an internal error.")
def predict_command(model_path, input_path, output_path, key, stored_values, debug) -> None:
    """Class probabilities and predicted classes of a saved model for the rows of an .npz."""

    def body():
        from hessfree.atomic import atomic_write
        from hessfree.errors import InputError
        from hessfree.modelfile import load_model

        trained = load_model(model_path)
        X, y, used_key = read_inputs(input_path, key)
        try:
            X = trained.features(X, stored=stored_values, where=f"{Path(input_path).name}: {used_key}")
        except InputError as exc:
            raise DataError(str(exc)) from None
        scaling = trained.scaling
        if not stored_values and scaling.divide_by != 1.0 and X.size and float(np.abs(X).max()) > 1.5:
            click.echo(
                f"warning: inputs reach {float(np.abs(X).max()):g}, but the model was trained on {scaling.stored} "
                f"divided by {scaling.divide_by:g}; pass --stored-values if these are such stored values",
                err=True,
            )
        classes = trained.predict(X)
        out = {"classes": classes}
        if trained.has_probabilities:
            out["probabilities"] = trained.predict_proba(X)
        else:
            out["outputs"] = trained.outputs(X).astype(np.float64)
        buffer = io.BytesIO()
        np.savez(buffer, **out)
        try:
            atomic_write(output_path, buffer.getvalue())
        except OSError as exc:
            raise DataError(f"{output_path}: cannot write ({exc.strerror or exc})") from None
        click.echo(f"predicted {len(classes):,} rows → {output_path} ({', '.join(out)})")
        if y is not None and np.ndim(y) == 1 and len(y) == len(classes) and np.asarray(y).dtype.kind in "iu":
            accuracy = float(np.mean(classes == np.asarray(y)))
            click.echo(f"accuracy {accuracy:.4f} against the labels in {Path(input_path).name}")

    _guard(debug, body)
