"""The communicator interface: validation, metering records, backend choice, BLAS helpers."""

from __future__ import annotations

import sys

import attrs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hessfree.blas import blas_thread_counts, blas_threads, threads_per_rank
from hessfree.comm import (
    DEFAULT_TIMEOUT,
    Backend,
    CommCounts,
    MPIComm,
    Phase,
    PhaseCounts,
    SerialComm,
    launched_by_mpi,
    make_comm,
    resolve_backend,
    run_ranks,
    run_threads,
    warm_numba_cache,
)
from hessfree.errors import CommError, ConfigError, InputError

# ---------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "bad",
    [[1.0, 2.0], 3.0, np.ones(2, dtype=np.complex128), np.ones(2, dtype=bool), np.array(["a"], dtype=object)],
    ids=["list", "float", "complex", "bool", "object"],
)
def test_allreduce_and_bcast_reject_what_is_not_a_supported_array(bad):
    comm = SerialComm()
    with pytest.raises(InputError):
        comm.allreduce(bad)
    with pytest.raises(InputError):
        comm.bcast(bad)
    assert comm.counts().total.collectives == 0


@pytest.mark.parametrize(
    "out, message",
    [
        (np.empty(4), r"out has shape \(4,\) dtype float64, input has shape \(3,\)"),
        (np.empty(3, dtype=np.float32), "dtype float32"),
        (np.empty(6)[::2], "C-contiguous"),
    ],
)
def test_allreduce_rejects_an_unfit_out(out, message):
    with pytest.raises(InputError, match=message):
        SerialComm().allreduce(np.ones(3), out=out)


def test_read_only_buffers_cannot_receive():
    frozen = np.ones(3)
    frozen.flags.writeable = False
    comm = SerialComm()
    with pytest.raises(InputError, match="read-only"):
        comm.allreduce(np.ones(3), out=frozen)
    with pytest.raises(InputError, match="read-only"):
        comm.bcast(frozen)
    assert comm.allreduce(frozen).flags.writeable  # a read-only *input* is fine


@pytest.mark.parametrize("root", [-1, 1, True, 0.0, "0"])
def test_bcast_root_must_be_a_rank(root):
    with pytest.raises(InputError, match="root"):
        SerialComm().bcast(np.ones(2), root=root)


@pytest.mark.parametrize("values", [(), ("x",), (None,), ([1.0, 2.0],)])
def test_allreduce_scalars_takes_one_or_more_real_numbers(values):
    with pytest.raises(InputError):
        SerialComm().allreduce_scalars(*values)


def test_non_contiguous_and_overlapping_inputs_are_handled():
    comm = SerialComm()
    x = np.arange(12.0).reshape(3, 4)
    out = comm.allreduce(x.T)  # non-contiguous input: copied, result C-contiguous
    assert out.flags.c_contiguous and np.array_equal(out, x.T)
    y = np.arange(10.0)
    expected = y[:-1].copy()
    comm.allreduce(y[:-1], out=y[1:])  # overlapping but not identical: input copied first
    assert np.array_equal(y[1:], expected)


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), "3", True, None])
def test_timeout_must_be_finite_and_positive(timeout):
    with pytest.raises(ConfigError):
        SerialComm(timeout=timeout)
    with pytest.raises(ConfigError):
        run_threads(lambda comm: None, 2, timeout=timeout)
    with pytest.raises(ConfigError):
        make_comm("serial", timeout=timeout)


def test_default_timeout_is_documented_value():
    assert SerialComm().timeout == DEFAULT_TIMEOUT == 300.0
    assert make_comm("serial", timeout=2.5).timeout == 2.5


@given(hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64]), hnp.array_shapes(min_dims=0, min_side=0)))
def test_serial_allreduce_is_a_counted_copy(x):
    comm = SerialComm()
    out = comm.allreduce(x)
    assert out is not x and out.dtype == x.dtype and out.shape == x.shape
    assert out.tobytes() == x.tobytes()
    assert comm.allreduce(x, out=x) is x
    assert comm.counts().other == PhaseCounts(allreduce=2, bytes=2 * x.nbytes)


def test_serial_abort_raises_with_the_exit_code():
    with pytest.raises(CommError) as info:
        SerialComm().abort(4)
    assert info.value.exit_code == 4


# ------------------------------------------------------------------------ metering


def test_phase_scopes_nest_and_restore_even_on_error():
    comm = SerialComm()
    assert comm.meter.phase is Phase.OTHER
    with comm.phase(Phase.GRADIENT):
        with comm.phase("line_search"):
            assert comm.meter.phase is Phase.LINE_SEARCH
        assert comm.meter.phase is Phase.GRADIENT
    with pytest.raises(RuntimeError):
        with comm.phase(Phase.CURVATURE):
            raise RuntimeError
    assert comm.meter.phase is Phase.OTHER
    with pytest.raises(InputError, match="unknown phase"):
        with comm.phase("solve"):
            pass


def test_counts_are_frozen_snapshots_that_subtract():
    comm = SerialComm()
    with comm.phase(Phase.GRADIENT):
        comm.allreduce(np.ones(5))
    before = comm.counts()
    with comm.phase(Phase.GRADIENT):
        comm.allreduce_scalars(1.0, 2.0)
    comm.barrier()
    after = comm.counts()
    assert before.gradient == PhaseCounts(allreduce=1, bytes=40)  # snapshot unchanged
    delta = after - before
    assert delta.gradient == PhaseCounts(allreduce_scalars=1, bytes=16)
    assert delta[Phase.OTHER] == PhaseCounts(barrier=1)
    assert after.total == PhaseCounts(allreduce=1, allreduce_scalars=1, barrier=1, bytes=56)
    assert after.total.collectives == 3
    assert after.as_dict()["gradient"] == {
        "allreduce": 1, "allreduce_scalars": 1, "bcast": 0, "barrier": 0, "allgather": 0, "reduce_scatter": 0,
        "bytes": 56, "collectives": 2,
    }
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        after.gradient = PhaseCounts()  # type: ignore[misc]
    with pytest.raises(InputError):
        _ = before - after
    comm.meter.reset()
    assert comm.counts() == CommCounts()


@pytest.mark.parametrize("bad", [-1, 1.5, None])
def test_phase_counts_validate_their_fields(bad):
    with pytest.raises((TypeError, ValueError)):
        PhaseCounts(allreduce=bad)


# ------------------------------------------------------------------ choosing backends


def test_backends_are_chosen_by_name_or_enum():
    assert resolve_backend("serial") is Backend.SERIAL
    assert resolve_backend(Backend.THREADS) is Backend.THREADS
    assert resolve_backend("mpi") is Backend.MPI
    with pytest.raises(ConfigError, match="unknown communicator backend 'gloo'"):
        resolve_backend("gloo")


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, Backend.SERIAL),
        ({"OMPI_COMM_WORLD_SIZE": "4"}, Backend.MPI),
        ({"PMI_SIZE": "2"}, Backend.MPI),
        ({"PMIX_RANK": "0"}, Backend.MPI),
        ({"OMPI_COMM_WORLD_SIZE": ""}, Backend.SERIAL),
    ],
)
def test_auto_picks_mpi_only_when_launched_by_mpirun(env, expected):
    assert resolve_backend("auto", env) is expected
    assert launched_by_mpi(env) == (expected is Backend.MPI)


def test_make_comm_and_run_ranks(monkeypatch):
    for name in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(make_comm("auto"), SerialComm)
    assert isinstance(make_comm(), SerialComm)
    with pytest.raises(ConfigError, match="run_threads"):
        make_comm("threads")
    assert run_ranks("serial", lambda comm: comm.size) == [1]
    assert run_ranks("threads", lambda comm: comm.rank, ranks=3) == [0, 1, 2]
    with pytest.raises(ConfigError, match="1 rank"):
        run_ranks("serial", lambda comm: None, ranks=2)


def test_mpi_backend_without_mpi4py_is_a_clear_comm_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    with pytest.raises(CommError, match=r"pip install 'hessfree\[mpi\]'"):
        MPIComm()
    with pytest.raises(CommError):
        make_comm("mpi")


def test_serial_warmup_runs_once_and_returns_the_result():
    calls: list[int] = []
    comm = SerialComm()
    assert warm_numba_cache(comm, lambda: calls.append(1) or "ok") == "ok"
    assert calls == [1]
    assert comm.counts().other.barrier == 1


def test_thread_warmup_orders_rank0_before_the_others():
    order: list[int] = []

    def work(comm):
        return warm_numba_cache(comm, lambda: order.append(comm.rank) or comm.rank)

    assert run_threads(work, 3) == [0, 1, 2]
    assert order[0] == 0 and sorted(order[1:]) == [1, 2]


# --------------------------------------------------------------------------- BLAS


@pytest.mark.parametrize("ranks, cores, expected", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 8, 4), (3, 8, 2)])
def test_threads_per_rank_shares_the_cores(ranks, cores, expected):
    assert threads_per_rank(ranks, cores) == expected


@pytest.mark.parametrize("bad", [0, -2, 1.0, True])
def test_thread_counts_are_positive_integers(bad):
    with pytest.raises(ConfigError):
        threads_per_rank(bad)
    with pytest.raises(ConfigError):
        with blas_threads(bad):
            pass


def test_blas_threads_sets_every_pool_and_restores():
    before = blas_thread_counts()
    assert before, "numpy's BLAS should be visible to threadpoolctl"
    with blas_threads(1) as n:
        assert n == 1 and set(blas_thread_counts().values()) == {1}
    assert blas_thread_counts() == before


def test_local_ranks_from_the_launcher_environment():
    from hessfree.blas import local_ranks

    assert local_ranks({}) == 1
    assert local_ranks({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}) == 4
    assert local_ranks({"OMPI_COMM_WORLD_LOCAL_SIZE": "junk", "MPI_LOCALNRANKS": "3"}) == 3
    assert local_ranks({"SLURM_NTASKS_PER_NODE": "0"}) == 1
