"""Model files (``hessfree.modelfile``): save, load, predict, evaluate; ``train --save-model``,
``hessfree evaluate`` and ``hessfree predict``; corrupted and foreign files refused."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
from click.testing import CliRunner

import hessfree
from hessfree.cli.main import main
from hessfree.data import load_dataset
from hessfree.errors import DataError, InputError
from hessfree.modelfile import (
    MAGIC,
    ModelFileError,
    TrainedModel,
    decode,
    encode,
    load_model,
    save_model,
)
from hessfree.models import MLP
from hessfree.train import TrainConfig, fit

HF = ["--method", "gn-cg", "--hidden", "16", "--batch-size", "200", "--cg-max-iter", "15", "--seed", "1"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained_file(tmp_path_factory, digits):
    """A model trained for a few iterations through fit(save_model=...)."""
    path = tmp_path_factory.mktemp("model") / "digits.hfm"
    result = fit(MLP([64, 16, 10]), digits, TrainConfig(method="gn-cg", iterations=3, batch_size=300, cg_max_iter=10, seed=2),
                 save_model=path)
    assert result.saved_model == str(path)
    return path, result


# ------------------------------------------------------------------ the API
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_round_trip_keeps_the_network_and_every_parameter(tmp_path, dtype):
    model = MLP([5, 7, 4, 3], activation=["sigmoid", "relu"], loss="logistic_cross_entropy", dtype=dtype)
    theta = model.init_params(3)
    path = save_model(tmp_path / "m.hfm", model, theta, training=dict(note="hand-made"))
    back = load_model(path)
    assert back.model.layers == (5, 7, 4, 3) and back.model.activations == ("sigmoid", "relu")
    assert back.model.loss_kind.value == "logistic_cross_entropy" and back.model.dtype == np.dtype(dtype)
    assert back.theta.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.theta, theta)
    assert back.training["note"] == "hand-made" and back.training["hessfree"] == hessfree.__version__
    X = np.random.default_rng(0).standard_normal((11, 5))
    np.testing.assert_array_equal(back.predict(X), model.predict(theta, X))
    p = back.predict_proba(X)
    assert p.shape == (11, 3) and np.all((p > 0) & (p < 1))  # logistic: one probability per output


def test_the_file_is_deterministic_and_starts_with_the_magic(tmp_path):
    model = MLP([4, 3, 2])
    theta = model.init_params(0)
    a = encode(model, theta)
    assert a == encode(model, theta) and a.startswith(MAGIC)
    assert hashlib.sha256(a[:-32]).digest() == a[-32:]


def test_fit_writes_the_input_scaling_data_and_summary(trained_file, digits):
    path, result = trained_file
    trained = hessfree.load_model(path)  # exported lazily from the package
    assert isinstance(trained, TrainedModel)
    assert trained.scaling.divide_by == 16.0 and "0..16" in trained.scaling.stored
    assert trained.data["name"] == "digits" and trained.data["fingerprint"] == digits.fingerprint
    summary = trained.training["summary"]
    assert summary["iterations"] == 3 and summary["test_error"] == result.last.test_error
    assert trained.training["method"] == "gn-cg" and trained.training["train_config"]["cg_max_iter"] == 10
    np.testing.assert_array_equal(trained.theta, result.state.theta)


def test_probabilities_sum_to_one_and_their_argmax_is_the_prediction(trained_file, digits):
    trained = load_model(trained_file[0])
    p = trained.predict_proba(digits.X_test)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(np.argmax(p, axis=1), trained.predict(digits.X_test))


def test_evaluate_counts_errors_as_training_does(trained_file, digits):
    path, result = trained_file
    ev = load_model(path).evaluate(digits.X_test, digits.y_test)
    assert ev.n == digits.n_test and ev.error_rate == result.last.test_error
    assert ev.confusion.sum() == ev.n and ev.confusion.shape == (10, 10)
    assert ev.n - np.trace(ev.confusion) == ev.errors


def test_stored_values_are_scaled_as_in_training(trained_file, digits):
    trained = load_model(trained_file[0])
    raw = digits.X_test * 16.0  # the pixel intensities 0..16 as the digits file stores them
    np.testing.assert_array_equal(trained.predict(raw, stored=True), trained.predict(digits.X_test))


def test_inputs_of_the_wrong_width_are_refused_naming_the_shapes(trained_file):
    trained = load_model(trained_file[0])
    with pytest.raises(InputError, match=r"shape \(3, 63\); the model takes \(n, 64\)"):
        trained.predict(np.zeros((3, 63)))


def test_a_squared_error_model_has_outputs_not_probabilities(tmp_path):
    model = MLP([3, 4, 2], loss="squared_error")
    trained = load_model(save_model(tmp_path / "sq.hfm", model, model.init_params(1)))
    assert trained.outputs(np.ones((2, 3))).shape == (2, 2)
    with pytest.raises(InputError, match="squared_error"):
        trained.predict_proba(np.ones((2, 3)))


def test_non_finite_parameters_are_not_saved(tmp_path):
    model = MLP([3, 2])
    theta = model.init_params(0)
    theta[0] = np.nan
    with pytest.raises(InputError, match="finite"):
        save_model(tmp_path / "nan.hfm", model, theta)
    assert not (tmp_path / "nan.hfm").exists()


# ------------------------------------------------------------------ corrupt and foreign files
def _good_blob() -> bytes:
    model = MLP([6, 5, 3])
    return encode(model, model.init_params(0))


def _resealed(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize("where", ["magic", "version", "header", "payload", "checksum", "last"])
def test_a_flipped_byte_anywhere_is_refused(tmp_path, where):
    blob = bytearray(_good_blob())
    head_size = struct.unpack_from("<Q", blob, 12)[0]
    position = {"magic": 1, "version": 8, "header": 20 + head_size // 2, "payload": len(blob) - 40,
                "checksum": len(blob) - 10, "last": len(blob) - 1}[where]
    blob[position] ^= 0x01
    path = tmp_path / "bad.hfm"
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    expected = {"magic": "not a hessfree model file", "version": "version"}.get(where, "checksum")
    assert expected in message


@pytest.mark.parametrize("cut", [0, 5, 16, 100, -33, -1])
def test_truncated_files_are_refused(tmp_path, cut):
    blob = _good_blob()
    path = tmp_path / "short.hfm"
    path.write_bytes(blob[:cut])
    with pytest.raises(ModelFileError, match="truncated|not a hessfree model file|empty"):
        load_model(path)


def test_trailing_bytes_are_refused(tmp_path):
    path = tmp_path / "long.hfm"
    path.write_bytes(_good_blob() + b"\0")
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load_model(path)


@pytest.mark.parametrize("kind", ["npz", "text", "json", "png", "pickle"])
def test_foreign_files_are_refused(tmp_path, kind):
    path = tmp_path / f"foreign.{kind}"
    if kind == "npz":
        np.savez(path, X=np.zeros((2, 2)))
        path = path.with_suffix(".npz")
    elif kind == "text":
        path.write_text("layers = [64, 10]\n")
    elif kind == "json":
        path.write_text(json.dumps(dict(format_version=2, iteration=3)))
    elif kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    else:
        import pickle

        path.write_bytes(pickle.dumps({"theta": [1.0, 2.0]}))
    with pytest.raises(ModelFileError, match="not a hessfree model file"):
        load_model(path)


def test_a_newer_format_version_is_refused_by_number():
    blob = _good_blob()
    body = blob[:8] + struct.pack("<I", 7) + blob[12:-32]
    with pytest.raises(ModelFileError, match="version 7 is not supported"):
        decode(_resealed(body))


def test_a_header_that_does_not_match_the_payload_is_refused():
    blob = _good_blob()
    head_size = struct.unpack_from("<Q", blob, 12)[0]
    header = json.loads(blob[20: 20 + head_size])
    header["layers"] = [6, 4, 3]  # fewer parameters than the payload holds
    header["n_params"] = 6 * 4 + 4 + 4 * 3 + 3
    head = json.dumps(header).encode()
    rest = blob[20 + head_size: -32]
    body = blob[:12] + struct.pack("<Q", len(head)) + head + rest
    with pytest.raises(ModelFileError, match="payload of"):
        decode(_resealed(body))


def test_a_header_of_another_format_is_refused():
    blob = _good_blob()
    head_size = struct.unpack_from("<Q", blob, 12)[0]
    header = json.loads(blob[20: 20 + head_size])
    header["format"] = "something-else"
    head = json.dumps(header).encode()
    body = blob[:12] + struct.pack("<Q", len(head)) + head + blob[20 + head_size: -32]
    with pytest.raises(ModelFileError, match="not a hessfree-model file"):
        decode(_resealed(body))


def test_a_missing_model_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_model(tmp_path / "none.hfm")


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    """``hessfree train ... --save-model`` and its metrics."""
    out = tmp_path_factory.mktemp("cli")
    result = invoke("train", *HF, "--iterations", "4", "--save-model", out / "m.hfm", "--metrics", out / "m.jsonl")
    assert result.exit_code == 0, result.output
    assert f"model saved to {out / 'm.hfm'}" in result.stdout
    records = [json.loads(l) for l in (out / "m.jsonl").read_text().splitlines()]
    return out, records[-1]


def test_evaluate_reproduces_the_final_test_accuracy_exactly(cli_model):
    out, final = cli_model
    result = invoke("evaluate", "--model", out / "m.hfm", "--dataset", "digits", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "test" and report["same_data_as_training"] is True
    assert report["accuracy"] == 1 - final["test_error"]
    assert report["errors"] == round(final["test_error"] * report["n"])
    assert np.array(report["confusion"]).sum() == report["n"] == 450


def test_evaluate_prints_a_readable_summary(cli_model):
    out, final = cli_model
    result = invoke("evaluate", "--model", out / "m.hfm")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "trained with gn-cg on digits for 4 iterations" in text
    assert f"accuracy {1 - final['test_error']:.4f}" in text and "confusion" in text and "most confused" in text


def test_predict_writes_probabilities_whose_argmax_gives_the_accuracy(cli_model, tmp_path, digits):
    out, final = cli_model
    np.savez(tmp_path / "X.npz", X=digits.X_test, y=digits.y_test)
    result = invoke("predict", "--model", out / "m.hfm", "--input", tmp_path / "X.npz", "--output", tmp_path / "P.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "P.npz", allow_pickle=False) as p:
        probabilities, classes = p["probabilities"], p["classes"]
    assert probabilities.shape == (450, 10) and classes.dtype == np.int64
    np.testing.assert_array_equal(np.argmax(probabilities, axis=1), classes)
    assert np.mean(classes == digits.y_test) == 1 - final["test_error"]
    assert f"accuracy {1 - final['test_error']:.4f}" in result.stdout


def test_predict_warns_about_unscaled_inputs_and_scales_stored_values(cli_model, tmp_path, digits):
    out, _ = cli_model
    np.savez(tmp_path / "raw.npz", X=digits.X_test * 16)
    np.savez(tmp_path / "X.npz", X=digits.X_test)
    warned = invoke("predict", "--model", out / "m.hfm", "--input", tmp_path / "raw.npz", "--output", tmp_path / "a.npz")
    assert warned.exit_code == 0 and "--stored-values" in warned.stderr
    scaled = invoke("predict", "--model", out / "m.hfm", "--input", tmp_path / "raw.npz", "--output", tmp_path / "b.npz",
                    "--stored-values")
    plain = invoke("predict", "--model", out / "m.hfm", "--input", tmp_path / "X.npz", "--output", tmp_path / "c.npz")
    assert scaled.exit_code == plain.exit_code == 0 and scaled.stderr == ""
    with np.load(tmp_path / "b.npz") as b, np.load(tmp_path / "c.npz") as c:
        np.testing.assert_array_equal(b["classes"], c["classes"])


def test_predict_refuses_inputs_that_do_not_fit_naming_the_shapes(cli_model, tmp_path):
    out, _ = cli_model
    np.savez(tmp_path / "narrow.npz", X=np.zeros((5, 63)))
    result = invoke("predict", "--model", out / "m.hfm", "--input", tmp_path / "narrow.npz", "--output", tmp_path / "P.npz")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "(5, 63)" in line and "(n, 64)" in line
    assert not (tmp_path / "P.npz").exists()


def test_evaluate_refuses_a_dataset_that_does_not_fit(cli_model, tmp_path):
    out, _ = cli_model
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "other.npz", X=rng.standard_normal((20, 5)), y=rng.integers(0, 3, 20))
    result = invoke("evaluate", "--model", out / "m.hfm", "--dataset", "npz", "--data-dir", tmp_path / "other.npz")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "5 features" in line and "(n, 64)" in line


def test_evaluate_on_an_npz_without_test_set_uses_its_samples(cli_model, tmp_path, digits):
    out, final = cli_model
    np.savez(tmp_path / "d.npz", X=digits.X_test, y=digits.y_test)
    result = invoke("evaluate", "--model", out / "m.hfm", "--dataset", "npz", "--data-dir", tmp_path / "d.npz", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "train" and report["notes"] and report["accuracy"] == 1 - final["test_error"]
    assert report["same_data_as_training"] is False


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("damage", ["flip", "foreign", "missing"])
def test_commands_refuse_corrupt_foreign_and_missing_model_files(cli_model, tmp_path, command, damage, digits):
    out, _ = cli_model
    path = tmp_path / "model.hfm"
    if damage == "flip":
        blob = bytearray((out / "m.hfm").read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        path.write_bytes(bytes(blob))
    elif damage == "foreign":
        np.savez(tmp_path / "model.npz", X=np.zeros(3))
        path = tmp_path / "model.npz"
    np.savez(tmp_path / "X.npz", X=digits.X_test)
    args = ["--model", path] + (["--input", tmp_path / "X.npz", "--output", tmp_path / "P.npz"] if command == "predict" else [])
    result = invoke(command, *args)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert {"flip": "checksum", "foreign": "not a hessfree model file", "missing": "not found"}[damage] in line


def test_float32_and_validation_runs_are_reproduced_too(tmp_path):
    args = ["train", *HF, "--iterations", "2", "--dtype", "float32", "--validation", "0.2",
            "--save-model", tmp_path / "v.hfm", "--metrics", tmp_path / "v.jsonl"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "validation accuracy" in result.stdout
    final = json.loads((tmp_path / "v.jsonl").read_text().splitlines()[-1])
    report = json.loads(invoke("evaluate", "--model", tmp_path / "v.hfm", "--split", "validation", "--json").stdout)
    assert report["split"] == "validation" and report["accuracy"] == 1 - final["test_error"]
    assert load_model(tmp_path / "v.hfm").model.dtype == np.float32


def test_a_diverged_run_saves_no_model(tmp_path):
    result = invoke("train", "--method", "sgd", "--lr", "1e308", "--epochs", "2", "--quiet", "--save-model", tmp_path / "d.hfm")
    assert result.exit_code == 3
    assert "model not saved" in result.stderr and not (tmp_path / "d.hfm").exists()
