"""JIT outside the clock: ``Model.warm_up`` compiles every kernel set a model can run, so
the first timed iteration compiles nothing (the parallel set runs only on large arrays,
which a tiny warm-up batch would otherwise never reach)."""

import numpy as np
import pytest

from hessfree.models import MLP
from hessfree.models import kernels as K


def signatures(kernel_set) -> int:
    return sum(len(getattr(kernel_set, name).signatures) for name in vars(kernel_set))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_warm_up_compiles_the_parallel_set_of_a_parallel_model(dtype):
    model = MLP([6, 5, 3], activation=["sigmoid"], loss="logistic_cross_entropy", dtype=dtype, parallel=True)
    model.warm_up()
    for kernel_set in (K.SERIAL, K.PARALLEL):
        compiled = {name: getattr(kernel_set, name).signatures for name in vars(kernel_set)}
        used = [sigs for sigs in compiled.values() if sigs]
        assert used and any(np.dtype(dtype).name in str(sig) for sigs in used for sig in sigs)
    # a large pass afterwards adds no new parallel compilation
    before = signatures(K.PARALLEL)
    X = np.random.default_rng(0).random((1 << 17, 6)).astype(dtype)
    y = np.random.default_rng(1).integers(0, 3, 1 << 17)
    model.loss_grad(model.init_params(0), X, y)
    assert signatures(K.PARALLEL) == before


def test_warm_up_leaves_the_model_unchanged():
    model = MLP([6, 5, 3], parallel=True)
    twin = MLP([6, 5, 3], parallel=True)
    model.warm_up()
    assert model == twin and model.kernels is K.kernels(True)


def test_the_solvers_fused_updates_compile_in_the_warm_up():
    """``fit``'s warm-up also compiles the Krylov updates: a CG solve afterwards, in float32
    and float64, with the trainer's damped operator, compiles nothing more."""
    from hessfree.comm import SerialComm
    from hessfree.solvers import CG, fused
    from hessfree.train.hf import CurvatureOperator
    from hessfree.train.layout import DataParallel

    fused.warm_up()
    kernels = (fused._axpy_into, fused._scale_add)
    for kernel in kernels:
        assert {"float32", "float64"} <= {str(sig[0].dtype) for sig in kernel.signatures}
    before = [len(k.signatures) for k in kernels]
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        A = rng.standard_normal((20, 20)).astype(dtype)
        A = A @ A.T
        op = CurvatureOperator(lambda v: A @ v, DataParallel(SerialComm(), None), batch_size=4, shift=0.5)
        CG(max_iter=15, rtol=0.0, progress_tol=0.0).solve(op, rng.standard_normal(20).astype(dtype))
    assert [len(k.signatures) for k in kernels] == before


def test_fit_warms_the_fused_updates_up(monkeypatch):
    from hessfree.data import load_dataset
    from hessfree.solvers import fused
    from hessfree.train import TrainConfig, fit

    calls = []
    monkeypatch.setattr(fused, "warm_up", lambda: calls.append("fused"))
    fit(MLP([64, 8, 10]), load_dataset("digits"), TrainConfig(iterations=1, batch_size=100, cg_max_iter=3))
    assert calls == ["fused"]


def test_the_first_order_updates_compile_in_the_warm_up():
    """``fit``'s warm-up also compiles the fused first-order updates: an epoch of every rule
    afterwards, in float32 and float64, with and without weight decay, compiles nothing more."""
    from hessfree.data import load_dataset
    from hessfree.train import TrainConfig, fit, updates

    updates.warm_up()
    kernels = (updates._mean_gradient_into, updates._sgd, updates._momentum, updates._adam)
    before = [len(k.signatures) for k in kernels]
    data = load_dataset("digits")
    for dtype in ("float32", "float64"):
        for method, wd in (("sgd", 0.0), ("msgd", 1e-4), ("adam", 1e-4), ("adamw", 1e-4)):
            config = TrainConfig(method=method, epochs=1, batch_size=256, weight_decay=wd)
            fit(MLP([64, 8, 10], dtype=dtype), data, config, warm_up=False)
    assert [len(k.signatures) for k in kernels] == before


def _all_signatures() -> int:
    from hessfree.solvers import fused
    from hessfree.train import updates

    others = [K.all_finite, fused._axpy_into, fused._scale_add, updates._mean_gradient_into, updates._sgd,
              updates._momentum, updates._adam]
    return signatures(K.SERIAL) + signatures(K.PARALLEL) + sum(len(k.signatures) for k in others)


@pytest.mark.parametrize(
    "settings",
    [
        {},  # the quick start: digits, read-only dataset labels
        {"autoencoder": True, "hidden": "16", "activation": "sigmoid", "loss": "logistic_cross_entropy"},  # targets
        {"gradient_batch": 500},  # windows gathered by Batch.take when they wrap
        {"method": "msgd", "epochs": 1},
    ],
)
def test_a_run_compiles_nothing_after_the_warm_up(settings):
    """JIT outside the clock: the signatures ``fit``'s warm-up compiles are those the run
    uses. (The loss kernels once compiled again in the first iteration for the dataset's
    read-only labels; a batch's labels and targets are now always read-only.)"""
    from hessfree.comm import SerialComm
    from hessfree.train import Callback, fit, make_run_config
    from hessfree.train.run import build

    class Count(Callback):
        def on_warmup_end(self, seconds):
            self.after_warm_up = _all_signatures()

    run_config = make_run_config({"dataset": "digits", "iterations": 3, **settings})
    data, model = build(run_config, SerialComm())
    count = Count()
    fit(model, data, run_config.train, SerialComm(), callbacks=[count])
    assert _all_signatures() == count.after_warm_up
