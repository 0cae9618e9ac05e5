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
