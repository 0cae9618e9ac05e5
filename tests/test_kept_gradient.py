"""The gradient taken along with the line search's first trial (``hessfree.train.hf``): the
fused pass gives bitwise the values of the separate ones, the trajectory is bitwise the one
without it, only passes are saved, and a kept gradient is used for its own θ only."""

import json

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessfree.comm import Phase, SerialComm
from hessfree.models import MLP
from hessfree.models.base import Model
from hessfree.train import HessianFreeTrainer, make_run_config
from hessfree.train.run import build
from train_cases import case_config

LOSSES = ["softmax_cross_entropy", "logistic_cross_entropy", "squared_error"]


def batch(loss: str, rows: int, widths: list[int], seed: int):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, widths[0]))
    if loss == "softmax_cross_entropy":
        return X, rng.integers(0, widths[-1], rows)
    return X, rng.random((rows, widths[-1]))


@settings(deadline=None, max_examples=25)
@given(loss=st.sampled_from(LOSSES), rows=st.integers(0, 40), chunk=st.integers(1, 17),
       widths=st.lists(st.integers(1, 9), min_size=2, max_size=4), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_the_fused_pass_is_bitwise_evaluate_and_gradient(loss, rows, chunk, widths, seed, dtype):
    model = MLP(layers=widths, loss=loss, dtype=dtype, chunk_size=chunk)
    theta = model.init_params(seed)
    X, y = batch(loss, rows, widths, seed)
    value, wrong = model.evaluate(theta, X, y)
    _, grad, squares = model.loss_grad_squares(theta, X, y)
    fused = model.evaluate_grad(theta, X, y, squares=True)
    assert fused[0] == value and fused[1] == wrong
    np.testing.assert_array_equal(fused[2], grad)
    np.testing.assert_array_equal(fused[3], squares)
    plain = model.evaluate_grad(theta, X, y)
    assert plain[3] is None
    np.testing.assert_array_equal(plain[2], model.loss_grad(theta, X, y)[1])
    default = Model.evaluate_grad(model, theta, X, y, squares=True)  # what a two-pass model does
    assert default[:2] == fused[:2]
    np.testing.assert_array_equal(default[2], fused[2])
    assert model.fused_evaluation and not Model.fused_evaluation


class CountingModel:
    """A model that counts its gradient passes (every other attribute is the model's)."""

    def __init__(self, model):
        self._model, self.gradient_passes = model, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def loss_grad(self, *args, **kw):
        self.gradient_passes += 1
        return self._model.loss_grad(*args, **kw)

    def loss_grad_squares(self, *args, **kw):
        self.gradient_passes += 1
        return self._model.loss_grad_squares(*args, **kw)


def trainer(fused: bool, **train):
    config = make_run_config(case_config("gn-cg", **train))
    comm = SerialComm()
    data, model = build(config, comm)
    t = HessianFreeTrainer(CountingModel(model), data, config.train, comm)
    t.fused = fused
    return t


def steps(t: HessianFreeTrainer, n: int):
    state, out = t.initial_state(), []
    for _ in range(n):
        state, record = t.step(state)
        out.append((state, record))
    return out


TIMES = {"time_s", "time_gradient_s", "time_solve_s", "time_line_search_s", "epochs"}
#: where the work went (checked on their own below)
TAKEN_ALONG = {"gradient_kept", "gradient_along"}


@pytest.mark.parametrize("train", [dict(backtracking=False), dict(), dict(backtracking=False, preconditioner="martens")],
                         ids=["last-iterate", "walk-back", "preconditioned"])
def test_the_trajectory_is_bitwise_the_one_without_it_and_only_passes_are_saved(train):
    fused, plain = trainer(True, **train), trainer(False, **train)
    a, b = steps(fused, 8), steps(plain, 8)
    kept = 0
    for (sa, ra), (sb, rb) in zip(a, b):
        np.testing.assert_array_equal(sa.theta, sb.theta)
        da, db = ra.as_dict(), rb.as_dict()
        assert {k: v for k, v in da.items() if k not in TIMES | TAKEN_ALONG} == {k: v for k, v in db.items() if k not in TIMES | TAKEN_ALONG}
        saved = rb.epochs - ra.epochs  # cumulative: one epoch per kept gradient so far
        assert saved == pytest.approx(round(saved), abs=1e-9) and round(saved) >= kept
        kept = round(saved)
    assert kept >= 1  # the case exercises it
    assert plain.model.gradient_passes - fused.model.gradient_passes == kept
    # the records say where the work went: as many kept gradients as passes saved, each
    # after a step whose first trial took it along; the plain run took none along
    assert sum(r.gradient_kept for _, r in a) == kept
    assert all(prev.gradient_along for (_, prev), (_, r) in zip(a, a[1:]) if r.gradient_kept)
    assert not any(r.gradient_kept or r.gradient_along for _, r in b)
    # the collectives are the same calls in the same phases
    assert a[-1][0].comm == b[-1][0].comm and a[-1][0].comm[Phase.GRADIENT].collectives == 8


def test_a_kept_gradient_serves_its_own_theta_only():
    t = trainer(True, backtracking=False)
    (s1, _), (s2, r2) = steps(t, 2)
    assert t.kept_gradient is not None and t.kept_gradient.theta is s2.theta
    again, r2b = t.step(s1)  # from an earlier state: its gradient is computed again
    np.testing.assert_array_equal(again.theta, s2.theta)
    assert r2b.loss == r2.loss and r2b.train_error == r2.train_error
    assert r2b.epochs >= r2.epochs
    copied = attrs.evolve(again, theta=again.theta.copy())  # equal values, another array: recomputed
    passes = t.model.gradient_passes
    t.step(copied)
    assert t.model.gradient_passes == passes + 1


def test_a_checkpoint_written_before_the_kept_gradient_resumes_on_the_same_trajectory(tmp_path):
    from hessfree import checkpoint
    from hessfree.data import load_dataset
    from hessfree.train import Callback, Checkpointing, TrainConfig, fit

    class StopAt(Callback):
        def on_iteration(self, record, state):
            return state.iteration >= 3

    digits = load_dataset("digits")
    config = TrainConfig(iterations=5, batch_size=300, cg_max_iter=20, seed=2, backtracking=False)
    whole = fit(MLP([64, 16, 10]), digits, config).history
    saves = Checkpointing(directory=tmp_path)
    fit(MLP([64, 16, 10]), digits, config, callbacks=[StopAt()], checkpoints=saves)
    for manifest in tmp_path.glob("*.json"):
        body = json.loads(manifest.read_bytes())
        for name in ("first_trial_won", "gradient_kept"):  # as the code before them wrote it
            del body["scalars"][name]
        manifest.write_bytes(checkpoint.encode_manifest(body))
    rest = fit(MLP([64, 16, 10]), digits, config, checkpoints=saves, resume=True).history
    assert [r.iteration for r in rest] == [4, 5]
    assert [r.loss for r in rest] == [r.loss for r in whole[3:]]


def test_every_rank_keeps_the_same_gradients_as_serial(monkeypatch):
    """Thread ranks decide alike when to keep a gradient (reduced values only): the same
    losses as serial to rounding, and the same effective epochs, so the same keeps."""
    from hessfree.comm import run_threads
    from test_train import run_records

    config = case_config("gn-cg", iterations=8)  # the last iterate: most steps keep theirs
    serial = run_records(config, SerialComm())[0]
    with monkeypatch.context() as patch:
        patch.setattr(MLP, "fused_evaluation", False)
        separate = run_records(config, SerialComm())[0]
    assert [r.loss for r in separate] == [r.loss for r in serial]
    assert serial[-1].epochs <= separate[-1].epochs - 4  # at least 4 kept, each one pass saved
    for records in run_threads(lambda comm: run_records(config, comm)[0], 3):
        np.testing.assert_allclose([r.loss for r in records], [r.loss for r in serial], rtol=1e-10)
        assert [r.epochs for r in records] == [r.epochs for r in serial]
