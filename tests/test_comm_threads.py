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


# ------------------------------------------------------------- the running-sum allreduce

# Sizes on both sides of threads._UNLOCKED_ELEMENTS (4096): small arrays are added with
# the world's mutex held, large ones with it released while other ranks keep arriving.
SMALL, LARGE = 1000, 70_001


def order_sensitive(size: int, n: int, dtype, seed: int = 0) -> list[np.ndarray]:
    """Inputs whose float sum depends on the order of the additions: large values of
    both signs that cancel, mixed with small ones that are lost or kept depending on
    when the cancellation happens."""
    rng = np.random.default_rng(seed)
    arrays = []
    for _ in range(size):
        scale = 10.0 ** rng.integers(-3, 8, n)
        arrays.append((rng.standard_normal(n) * scale).astype(dtype))
    return arrays


def rank_order_sum(arrays: list[np.ndarray]) -> np.ndarray:
    total = arrays[0].copy()
    for x in arrays[1:]:
        total = total + x
    return total


def test_order_sensitive_inputs_really_depend_on_the_order():
    """Guards the tests below: another order or grouping gives other bits."""
    arrays = order_sensitive(16, LARGE, np.float32)
    reference = arrays[0] + arrays[1] + arrays[2] + arrays[3] + arrays[4] + arrays[5] + arrays[6] + arrays[7] \
        + arrays[8] + arrays[9] + arrays[10] + arrays[11] + arrays[12] + arrays[13] + arrays[14] + arrays[15]
    assert same_bits(reference, rank_order_sum(arrays))
    assert not same_bits(reference, rank_order_sum(arrays[::-1]))
    halves = rank_order_sum(arrays[:8]) + rank_order_sum(arrays[8:])
    assert not same_bits(reference, halves)
    pairs = arrays
    while len(pairs) > 1:  # a tree: (x0 + x1) + (x2 + x3), ...
        pairs = [pairs[i] + pairs[i + 1] for i in range(0, len(pairs), 2)]
    assert not same_bits(reference, pairs[0])


@pytest.mark.parametrize("n", [SMALL, LARGE])
@pytest.mark.parametrize("size", [1, 2, 4, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_allreduce_is_bitwise_the_numpy_rank_order_sum(size, n, dtype):
    arrays = order_sensitive(size, n, dtype, seed=size)
    reference = rank_order_sum(arrays)

    def work(comm: ThreadComm) -> tuple[np.ndarray, np.ndarray]:
        x = arrays[comm.rank].copy()
        fresh = comm.allreduce(x)
        comm.allreduce(x, out=x)
        return fresh, x

    for fresh, in_place in run_threads(work, size, timeout=60):
        assert same_bits(fresh, reference)
        assert same_bits(in_place, reference)


@pytest.mark.parametrize("order", ["reversed", "rank0-last", "shuffled"])
def test_arrival_order_does_not_change_the_bits(order):
    """However the ranks arrive (here forced by staggered sleeps), the additions happen in
    rank order, partly while later ranks are still busy."""
    size = 16
    arrays = order_sensitive(size, LARGE, np.float32, seed=3)
    reference = rank_order_sum(arrays)
    position = {
        "reversed": list(range(size))[::-1],
        "rank0-last": [size - 1] + list(range(size - 1)),
        "shuffled": list(np.random.default_rng(1).permutation(size)),
    }[order]

    def work(comm: ThreadComm) -> np.ndarray:
        time.sleep(0.003 * position[comm.rank])
        return comm.allreduce(arrays[comm.rank])

    for got in run_threads(work, size, timeout=60):
        assert same_bits(got, reference)


@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_sixteen_ranks_back_to_back_in_place_with_changing_inputs(n):
    size = 16

    def work(comm: ThreadComm) -> list[int]:
        x = np.empty(n, np.float32)
        wrong = []
        for i in range(40):
            x[:] = arrays_for(i)[comm.rank]
            comm.allreduce(x, out=x)
            if not same_bits(x, references[i]):
                wrong.append(i)
            if i % 7 == 0:
                time.sleep(0.001 * (comm.rank % 3))  # vary who arrives first
        return wrong

    def arrays_for(i: int) -> list[np.ndarray]:
        return inputs[i % len(inputs)]

    inputs = [order_sensitive(size, n, np.float32, seed=s) for s in range(3)]
    references = [rank_order_sum(arrays_for(i)) for i in range(40)]
    assert run_threads(work, size, timeout=60) == [[]] * size


def test_interleaved_shapes_dtypes_and_collectives_keep_their_results_apart():
    """The world reuses one scratch buffer per shape and dtype; more shapes than it keeps,
    interleaved with scalars, bcasts and barriers, must not mix up results."""
    size = 4
    shapes = [(n,) for n in (3, 5000, 7, 9000, 11, 13, 17, 19, 23, 70_000)] + [(), (0,), (40, 300)]

    def work(comm: ThreadComm) -> list[str]:
        bad = []
        for i, shape in enumerate(shapes * 2):
            for dtype in (np.float64, np.float32, np.int64):
                x = np.full(shape, comm.rank + i, dtype=dtype)
                got = comm.allreduce(x)
                expected = np.full(shape, sum(r + i for r in range(size)), dtype=dtype)
                if not same_bits(got, expected):
                    bad.append(f"allreduce {shape} {dtype}")
            if comm.allreduce_scalars(comm.rank)[0] != sum(range(size)):
                bad.append("scalars")
            buf = np.full(shape, float(comm.rank))
            comm.bcast(buf, root=i % size)
            if not np.all(buf == i % size):
                bad.append(f"bcast {shape}")
            comm.barrier()
        return bad

    assert run_threads(work, size, timeout=60) == [[]] * size


@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_bcast_root_may_change_its_buffer_right_after(n):
    """bcast is one rendezvous: every copy is made before anyone, root included, returns."""
    size = 16

    def work(comm: ThreadComm) -> bool:
        ok = True
        for i in range(20):
            root = i % size
            buf = np.full(n, float(1000 * i + comm.rank))
            comm.bcast(buf, root=root)
            ok &= bool(np.all(buf == 1000 * i + root))
            buf[:] = -1.0  # root overwrites at once; nobody may still be copying from it
        return ok

    assert run_threads(work, size, timeout=60) == [True] * size


@pytest.mark.parametrize(
    "late_call, expected",
    [
        (lambda c: c.allreduce(np.ones(LARGE, np.float32)), "float32|<f4"),
        (lambda c: c.allreduce(np.ones(LARGE + 1)), rf"\({LARGE},\).*\({LARGE + 1},\)"),
        (lambda c: c.bcast(np.ones(LARGE)), "different collectives"),
    ],
)
def test_a_mismatch_arriving_after_the_sum_started_fails_every_rank(late_call, expected):
    """Ranks 0..2 arrive first and their inputs are summed; rank 3 calls something else."""
    errors: list[str] = []

    def work(comm: ThreadComm) -> None:
        try:
            if comm.rank == 3:
                time.sleep(0.1)
                late_call(comm)
            else:
                comm.allreduce(np.ones(LARGE))
        except CommError as error:
            errors.append(str(error))
            raise

    with pytest.raises(CommError, match=expected):
        run_threads(work, 4, timeout=10)
    assert len(errors) == 4
    assert all("ranks called different collectives" in e for e in errors)


def test_a_rank_failing_while_the_others_sum_wakes_them():
    woken: list[str] = []

    def work(comm: ThreadComm) -> None:
        if comm.rank == 0:  # the others' inputs wait for rank 0's, which never comes
            time.sleep(0.1)
            raise ValueError("rank 0 broke")
        try:
            comm.allreduce(np.ones(LARGE))
        except CommError as error:
            woken.append(str(error))
            raise

    start = time.monotonic()
    with pytest.raises(ValueError, match="rank 0 broke"):
        run_threads(work, 16, timeout=60)
    assert time.monotonic() - start < 5
    assert len(woken) == 15 and all("rank 0 failed" in w for w in woken)


def test_an_error_while_summing_fails_every_rank(monkeypatch):
    import hessfree.comm.threads as threads_module

    def no_memory(self, like):
        raise MemoryError("no room for the total")

    monkeypatch.setattr(threads_module._World, "_scratch_for", no_memory)
    woken: list[str] = []

    def work(comm: ThreadComm) -> None:
        try:
            comm.allreduce(np.ones(LARGE))
        except CommError as error:
            woken.append(str(error))
            raise

    with pytest.raises(MemoryError, match="no room"):
        run_threads(work, 4, timeout=10)
    assert len(woken) == 3
    assert all("failed while combining the buffers" in w and "MemoryError" in w for w in woken)


def test_a_stalled_rank_trips_the_deadline_of_a_large_allreduce():
    release = threading.Event()

    def work(comm: ThreadComm) -> None:
        if comm.rank == 2:
            release.wait(30)
            return
        with comm.phase(Phase.GRADIENT):
            comm.allreduce(np.ones(LARGE, np.float32))

    try:
        with pytest.raises(CommError) as info:
            run_threads(work, 4, timeout=0.5)
    finally:
        release.set()
    message = str(info.value)
    assert "allreduce (phase gradient)" in message and "rank(s) [2]" in message


@pytest.mark.parametrize("size", [2, 16])
def test_ranks_reducing_one_shared_array_in_place_get_size_times_it(size):
    """Inputs and outputs that are one array on every rank: the result still is x+x+…,
    never a sum that read an output already written."""
    shared = order_sensitive(1, LARGE, np.float64)[0]
    reference = rank_order_sum([shared] * size)

    def work(comm: ThreadComm) -> None:
        comm.allreduce(shared, out=shared)

    run_threads(work, size, timeout=60)
    assert same_bits(shared, reference)


def test_ranks_sharing_one_output_array_all_get_the_sum():
    size = 4
    arrays = order_sensitive(size, LARGE, np.float32, seed=5)
    out = np.empty_like(arrays[0])

    def work(comm: ThreadComm) -> None:
        comm.allreduce(arrays[comm.rank], out=out)

    run_threads(work, size, timeout=60)
    assert same_bits(out, rank_order_sum(arrays))
