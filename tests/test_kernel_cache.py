"""The serial and the parallel variant of every kernel keep their own machine code in
numba's disk cache.

numba indexes cached code by function name, source line, signature and CPU, not by the
``parallel`` option (numba issue #6845). Before the parallel variants were compiled under
names of their own, whichever variant reached the cache first was loaded for both: on a
warm cache the "serial" kernels that ``ThreadComm`` ranks call from several threads at
once launched numba's thread pool (a ~0.15 ms wake-up on every call, and an abort under
a threading layer that is not thread-safe), or the "parallel" kernels ran on one thread.

Each test fills an empty cache directory with one variant in one interpreter, then runs
the other variant in a second interpreter on that cache and asks numba whether its
thread pool was ever launched (``numba.threading_layer()`` raises until a parallel
region has run).
"""

import os
import subprocess
import sys
import textwrap

from hessfree.models import kernels as K

#: one kernel of the named set on a small array (the mechanism is the same for every
#: kernel; the last test checks that each is compiled under its own name)
RUN = textwrap.dedent(
    """
    import sys
    import numpy as np
    import numba
    from hessfree.models import kernels as K

    kernel = getattr(K, sys.argv[1]).backprop_activation
    G, A = np.random.default_rng(0).random((2, 70, 4))
    kernel(G, A, K.TANH, np.empty(4))
    try:
        numba.threading_layer()
        print("launched")
    except ValueError:
        print("not launched")
    """
)


def run_set(kernel_set: str, cache_dir) -> str:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "NUMBA_DISABLE_JIT": "0"}
    done = subprocess.run([sys.executable, "-c", RUN, kernel_set], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_serial_kernels_do_not_load_the_parallel_code_from_the_cache(tmp_path):
    assert run_set("PARALLEL", tmp_path) == "launched"  # the parallel code is now in the cache
    assert run_set("SERIAL", tmp_path) == "not launched"


def test_parallel_kernels_do_not_load_the_serial_code_from_the_cache(tmp_path):
    assert run_set("SERIAL", tmp_path) == "not launched"  # the serial code is now in the cache
    assert run_set("PARALLEL", tmp_path) == "launched"


def test_every_parallel_kernel_is_compiled_under_a_name_of_its_own():
    """What keeps the cache entries apart: the function numba files each variant under."""
    for name in vars(K.SERIAL):
        serial, parallel = getattr(K.SERIAL, name).py_func, getattr(K.PARALLEL, name).py_func
        assert parallel.__qualname__ == serial.__qualname__ + K.PARALLEL_SUFFIX
        assert parallel.__code__ is serial.__code__  # the same kernel, bit for bit
        assert parallel.__doc__ == serial.__doc__


# ------------------------------------------------------------------ which runs need the parallel set
def test_a_model_reaches_the_parallel_kernels_only_with_arrays_that_large():
    from hessfree.models import MLP

    threshold = K.PARALLEL_MIN_ELEMENTS
    model = MLP([64, 100, 10], parallel=True, chunk_size=8192)
    rows = threshold // 100  # a layer of 100 units over this many rows stays just below
    assert not model.reaches_parallel_kernels(rows) and model.reaches_parallel_kernels(rows + 1)
    assert MLP([64, 100, 10], chunk_size=rows).reaches_parallel_kernels(10**6) is False  # capped by the chunk
    assert MLP([threshold, 1, 2]).reaches_parallel_kernels(1)  # a weight matrix that large (add_into)


def test_the_cli_compiles_the_parallel_set_only_for_runs_that_reach_it():
    """The quick start's digits run never reaches the parallel kernels, so it builds a
    serial model (the same numbers, no parallel compilation); a larger one keeps them."""
    from hessfree.comm import SerialComm
    from hessfree.train import make_run_config
    from hessfree.train.run import build

    small = build(make_run_config({"dataset": "digits"}), SerialComm())[1]
    assert small.parallel is False
    large = build(make_run_config({"dataset": "digits", "hidden": "200"}), SerialComm())[1]
    assert large.parallel is True  # 1,347 rows × 200 units ≥ 2^18
    assert large.reaches_parallel_kernels(1347) and not small.reaches_parallel_kernels(1347)
