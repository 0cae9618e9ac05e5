"""Thread ranks: hypothesis-drawn arrays, failure handling, deadlines, BLAS limits."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hessfree.blas import blas_thread_counts, threads_per_rank
from hessfree.comm import Phase, ThreadComm, run_threads
from hessfree.errors import CommError, ConfigError

DTYPES = [np.float32, np.float64, np.int64]


@st.composite
def rank_arrays(draw, size: int):
    """``size`` arrays of one drawn shape (0-d and empty included) and dtype."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    if dtype.kind == "f":
        elements = st.floats(-1e6, 1e6, width=8 * dtype.itemsize, allow_nan=False)
    else:
        elements = st.integers(-(2**40), 2**40)
    return [draw(hnp.arrays(dtype, shape, elements=elements)) for _ in range(size)]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@given(data=st.data(), size=st.sampled_from([2, 3]), in_place=st.booleans())
def test_allreduce_of_drawn_arrays_is_the_rank_order_sum_on_every_rank(data, size, in_place):
    arrays = data.draw(rank_arrays(size))
    reference = arrays[0].copy()
    for x in arrays[1:]:
        reference = reference + x

    def work(comm: ThreadComm) -> np.ndarray:
        x = arrays[comm.rank].copy()
        return comm.allreduce(x, out=x) if in_place else comm.allreduce(x)

    for got in run_threads(work, size, timeout=30):
        assert same_bits(got, reference)


@given(data=st.data(), size=st.sampled_from([2, 3]))
def test_bcast_of_drawn_arrays_copies_the_root(data, size):
    arrays = data.draw(rank_arrays(size))
    root = data.draw(st.integers(0, size - 1))

    def work(comm: ThreadComm) -> np.ndarray:
        return comm.bcast(arrays[comm.rank].copy(), root=root)

    for got in run_threads(work, size, timeout=30):
        assert same_bits(got, arrays[root])


def test_results_come_back_in_rank_order():
    assert run_threads(lambda comm: (comm.rank, comm.size), 3) == [(0, 3), (1, 3), (2, 3)]
    assert run_threads(lambda comm: comm.rank, 1) == [0]


@pytest.mark.parametrize("size", [0, -1, 2.0, True, "2"])
def test_bad_rank_count_is_a_config_error(size):
    with pytest.raises(ConfigError):
        run_threads(lambda comm: None, size)


# ------------------------------------------------------------------------- failures


def test_a_rank_that_raises_wakes_the_others_and_its_error_is_reraised():
    woken: list[str] = []

    def work(comm: ThreadComm) -> None:
        if comm.rank == 1:
            time.sleep(0.1)  # the others are already waiting in the allreduce
            raise ValueError("bad shard on rank 1")
        try:
            with comm.phase(Phase.GRADIENT):
                comm.allreduce(np.ones(3))
        except CommError as error:
            woken.append(str(error))
            raise

    start = time.monotonic()
    with pytest.raises(ValueError, match="bad shard on rank 1") as info:
        run_threads(work, 3, timeout=60)
    assert time.monotonic() - start < 5
    assert any("raised on rank 1 of 3" in note for note in info.value.__notes__)
    assert len(woken) == 2
    assert all("allreduce (phase gradient)" in w and "rank 1 failed" in w for w in woken)


def test_a_rank_failing_later_still_stops_a_rank_that_was_computing():
    """The failed world refuses the next collective of a rank that was busy elsewhere."""
    seen: list[str] = []

    def work(comm: ThreadComm) -> None:
        if comm.rank == 0:
            raise KeyError("rank 0 fails first")
        time.sleep(0.2)  # computing when rank 0 fails
        try:
            comm.barrier()
        except CommError as error:
            seen.append(str(error))
            raise

    with pytest.raises(KeyError, match="rank 0 fails first"):
        run_threads(work, 2, timeout=60)
    assert len(seen) == 1 and "barrier (phase other)" in seen[0]


def test_a_rank_returning_early_fails_the_others_at_once():
    def work(comm: ThreadComm) -> None:
        if comm.rank == 2:
            return
        with comm.phase(Phase.CURVATURE):
            comm.allreduce(np.ones(4))

    start = time.monotonic()
    with pytest.raises(CommError, match=r"allreduce \(phase curvature\).*returned") as info:
        run_threads(work, 3, timeout=60)
    assert time.monotonic() - start < 5
    assert "rank 2" in str(info.value)


def test_sys_exit_in_a_rank_is_a_comm_error_not_an_exit():
    def work(comm: ThreadComm) -> None:
        if comm.rank == 1:
            raise SystemExit(0)
        comm.barrier()

    with pytest.raises(CommError, match=r"rank 1 raised SystemExit\(0\)"):
        run_threads(work, 2, timeout=60)


def test_a_stalled_rank_trips_the_deadline_naming_collective_phase_and_rank():
    release = threading.Event()

    def work(comm: ThreadComm) -> None:
        if comm.rank == 1:
            release.wait(30)  # stalled outside any collective
            return
        with comm.phase(Phase.LINE_SEARCH):
            comm.allreduce_scalars(1.0, 2.0)

    start = time.monotonic()
    try:
        with pytest.raises(CommError) as info:
            run_threads(work, 2, timeout=0.5)
    finally:
        release.set()
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "allreduce_scalars (phase line_search)" in message
    assert "timed out after 0.5 s" in message and "rank(s) [1]" in message
    assert any("abandoned" in note for note in info.value.__notes__)
    assert 0.5 <= elapsed < 5


@pytest.mark.parametrize(
    "call0, call1, expected",
    [
        (lambda c: c.bcast(np.ones(3)), lambda c: c.allreduce(np.ones(3)), "different collectives"),
        (lambda c: c.allreduce(np.ones(3)), lambda c: c.allreduce(np.ones(4)), r"\(3,\).*\(4,\)"),
        (lambda c: c.allreduce(np.ones(3)), lambda c: c.allreduce(np.ones(3, np.float32)), "float32|<f4"),
        (lambda c: c.bcast(np.ones(3), root=0), lambda c: c.bcast(np.ones(3), root=1), "root=1"),
        (lambda c: c.barrier(), lambda c: c.allreduce_scalars(1.0), "different collectives"),
    ],
)
def test_mismatched_collectives_fail_on_every_rank(call0, call1, expected):
    errors: list[str] = []

    def work(comm: ThreadComm) -> None:
        try:
            (call0 if comm.rank == 0 else call1)(comm)
        except CommError as error:
            errors.append(str(error))
            raise

    with pytest.raises(CommError, match=expected):
        run_threads(work, 2, timeout=10)
    assert len(errors) == 2


def test_the_world_stays_broken_after_a_failure():
    retries: list[str] = []

    def work(comm: ThreadComm) -> None:
        if comm.rank == 1:
            raise RuntimeError("boom")
        for _ in range(2):  # rank 0 ignores the first CommError and tries again
            try:
                comm.barrier()
            except CommError as error:
                retries.append(str(error))

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="boom"):
        run_threads(work, 2, timeout=30)
    assert time.monotonic() - start < 5
    assert len(retries) == 2 and all("rank 1 failed" in r for r in retries)


def test_abort_wakes_the_others_and_carries_the_exit_code():
    def work(comm: ThreadComm) -> None:
        if comm.rank == 0:
            time.sleep(0.05)
            comm.abort(7)
        comm.barrier()

    start = time.monotonic()
    with pytest.raises(CommError, match="aborted the communicator with code 7") as info:
        run_threads(work, 3, timeout=60)
    assert info.value.exit_code == 7
    assert time.monotonic() - start < 5


# --------------------------------------------------------------------- concurrency


def test_thread_ranks_forbid_parallel_numba_kernels():
    assert run_threads(lambda comm: comm.allows_parallel_kernels, 2) == [False, False]


def _blas_only(counts: dict) -> dict:
    """BLAS pools only: an OpenMP pool (numba's threading layer) keeps a per-thread count
    (omp_set_num_threads is thread-local), and rank threads never launch parallel kernels."""
    return {k: v for k, v in counts.items() if not k.startswith("openmp:")}


def test_blas_pools_are_limited_while_ranks_run_and_restored_after():
    before = blas_thread_counts()
    if not _blas_only(before):
        pytest.fail("no BLAS pool loaded although numpy is imported")
    inside = run_threads(lambda comm: _blas_only(blas_thread_counts()), 2, blas=1)
    assert all(set(counts.values()) == {1} for counts in inside)
    default = run_threads(lambda comm: _blas_only(blas_thread_counts()), 3)
    assert set(default[0].values()) == {threads_per_rank(3)}
    assert blas_thread_counts() == before


def test_each_rank_has_its_own_meter():
    def work(comm: ThreadComm):
        with comm.phase(Phase.CURVATURE):
            comm.allreduce(np.ones(2))
            if comm.rank == 0:
                comm.meter.reset()  # rank 0's counters only
            comm.allreduce(np.ones(2))
        return comm.counts()

    counts = run_threads(work, 2)
    assert counts[0].curvature.allreduce == 1 and counts[0].curvature.bytes == 16
    assert counts[1].curvature.allreduce == 2 and counts[1].curvature.bytes == 32


@pytest.mark.parametrize("size", [2, 3])
def test_back_to_back_in_place_reductions_never_see_a_neighbours_next_input(size):
    """Ranks rewrite their buffer right after each allreduce; no slice may read it early."""

    def work(comm: ThreadComm) -> list[float]:
        x = np.empty(4099)
        wrong = []
        for i in range(150):
            x[:] = comm.rank + i * size  # this iteration's input, in the result buffer
            comm.allreduce(x, out=x)
            expected = sum(r + i * size for r in range(size))
            if not np.all(x == expected):
                wrong.append(i)
        return wrong

    assert run_threads(work, size, timeout=30) == [[]] * size
