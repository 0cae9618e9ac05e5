"""Deep autoencoders: reconstruction targets (the inputs), the squared reconstruction
error per image as the reported error (Martens' measure), trained from the CLI and the API,
serial = threads."""

import numpy as np
import pytest

from hessfree.cli.run import run_training
from hessfree.comm import run_threads
from hessfree.models import MLP
from hessfree.train import fit, make_run_config
from hessfree.train.run import build

SETTINGS = dict(dataset="digits", autoencoder=True, hidden="24,6,24", activation="sigmoid,linear,sigmoid",
                loss="logistic_cross_entropy", method="gn-cg", iterations=4, seed=1, quiet=True)


def test_dense_target_error_is_the_squared_reconstruction_error():
    rng = np.random.default_rng(0)
    X = rng.random((9, 5))
    model = MLP([5, 3, 5], activation=["linear"], loss="logistic_cross_entropy")
    theta = model.init_params(0)
    loss, error = model.evaluate(theta, X, X)
    W1, b1 = model.unflatten(theta)[0]
    W2, b2 = model.unflatten(theta)[1]
    reconstruction = 1.0 / (1.0 + np.exp(-((X @ W1 + b1) @ W2 + b2)))
    assert error == pytest.approx(np.sum((reconstruction - X) ** 2), rel=1e-12)
    assert loss == pytest.approx(model.loss(theta, X, X), rel=1e-14)


def test_an_autoencoder_learns_to_reconstruct_and_reports_the_error_per_image():
    config = make_run_config(SETTINGS)
    data, model = build(config, comm=_serial())
    assert data.reconstruct and model.layers == (64, 24, 6, 24, 64)
    history = fit(model, data, config.train).history
    assert history[-1].train_error < 0.7 * history[0].train_error
    theta = fit(model, data, config.train).state.theta
    _, error = model.evaluate(theta, data.X_train, data.X_train)
    assert history[-1].train_error == pytest.approx(error / data.n_train, rel=1e-12)


def test_threads_give_the_serial_reconstructions():
    # a fixed Krylov budget: a stopping test sitting on its threshold could otherwise flip
    # with the rounding of sums reduced in another order (measured: one CG step more)
    config = make_run_config({**SETTINGS, "cg_max_iter": 10, "progress_tol": 0.0})

    def losses(comm):
        data, model = build(config, comm)
        return [r.loss for r in fit(model, data, config.train, comm).history]

    serial = losses(_serial())
    for per_rank in run_threads(losses, 2):
        assert per_rank == pytest.approx(serial, rel=1e-10)


def test_the_cli_trains_an_autoencoder(tmp_path, capsys):
    assert run_training({**SETTINGS, "quiet": False, "metrics": str(tmp_path / "m.jsonl")}, echo=print) == 0
    out = capsys.readouterr().out
    assert "train rec" in out and "train reconstruction error" in out


def test_autoencoder_checkpoints_are_not_classifier_checkpoints():
    assert make_run_config(SETTINGS).trajectory_hash() != make_run_config({**SETTINGS, "autoencoder": False}).trajectory_hash()


def _serial():
    from hessfree.comm import SerialComm

    return SerialComm()
