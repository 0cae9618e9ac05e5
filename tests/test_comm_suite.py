"""One communicator test suite, run for every backend.

The scenarios in ``tests/mpi/comm_scenarios.py`` run on serial, threads (2 and 3 ranks)
and MPI (2 and 3 ranks, really launched with ``mpirun``); each backend's per-rank
results are checked here by the same functions, against numpy references.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "mpi"))

from comm_scenarios import BLOCK_CASES, CASES, METERING_EXPECTED, block_input, rank_input, run_all  # noqa: E402
from launch import run_mpi  # noqa: E402

from hessfree.comm import SerialComm, run_threads  # noqa: E402

BACKENDS = [
    pytest.param(("serial", 1), id="serial"),
    pytest.param(("threads", 2), id="threads-2"),
    pytest.param(("threads", 3), id="threads-3"),
    pytest.param(("mpi", 2), id="mpi-2", marks=pytest.mark.mpi),
    pytest.param(("mpi", 3), id="mpi-3", marks=pytest.mark.mpi),
]

Results = list[dict[str, np.ndarray]]


def run_backend(kind: str, size: int, workdir: Path) -> Results:
    """Every scenario on ``size`` ranks of backend ``kind``; each rank's result dict."""
    if kind == "serial":
        return [run_all(SerialComm(), workdir)]
    if kind == "threads":
        return run_threads(lambda comm: run_all(comm, workdir), size, timeout=30)
    run = run_mpi(size, "comm_suite.py", str(workdir))
    assert run.returncode == 0, run.output
    results = []
    for rank in range(size):
        with np.load(workdir / f"rank{rank}.npz", allow_pickle=False) as saved:
            results.append({key: saved[key] for key in saved.files})
    return results


@pytest.fixture(scope="module")
def first_runs() -> dict[tuple[str, int], Results]:
    """Each backend's first run, shared by the checks and the run-to-run comparison."""
    return {}


def first_run(cache: dict, kind: str, size: int, tmp_path_factory) -> Results:
    if (kind, size) not in cache:
        cache[kind, size] = run_backend(kind, size, tmp_path_factory.mktemp(f"{kind}{size}"))
    return cache[kind, size]


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, first_runs, tmp_path_factory) -> tuple[str, int, Results]:
    kind, size = request.param
    return kind, size, first_run(first_runs, kind, size, tmp_path_factory)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_equal_on_every_rank(results: Results, key: str) -> np.ndarray:
    first = results[0][key]
    for rank, res in enumerate(results[1:], start=1):
        assert same_bits(res[key], first), f"{key}: rank {rank} differs from rank 0"
    return first


def rank_order_sum(name: str, shape, dtype: str, kind: str, size: int) -> np.ndarray:
    """((x0 + x1) + x2) + ... computed by numpy: the reference."""
    total = rank_input(name, 0, shape, dtype, kind)
    for rank in range(1, size):
        total = total + rank_input(name, rank, shape, dtype, kind)
    return total


def test_every_rank_reports_its_place(world):
    kind, size, results = world
    assert len(results) == size
    for rank, res in enumerate(results):
        assert int(res["meta:rank"]) == rank
        assert int(res["meta:size"]) == size
        assert bool(res["meta:parallel_kernels"]) == (kind != "threads")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_allreduce_matches_the_rank_order_sum(world, case):
    kind, size, results = world
    name, shape, dtype, values = case
    reference = rank_order_sum(name, shape, dtype, values, size)
    out = assert_equal_on_every_rank(results, f"allreduce:{name}.out")
    inplace = assert_equal_on_every_rank(results, f"allreduce:{name}.inplace")
    assert same_bits(out, inplace)
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    # our backends sum in rank order; MPI's reduction order is the library's, which
    # only matters for inexact (random float) sums of three or more terms
    if kind == "mpi" and size > 2 and values == "normal":
        tol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(out, reference, rtol=tol, atol=tol * np.abs(reference).max(initial=0))
    else:
        assert same_bits(out, reference)
    for res in results:
        assert bool(res[f"allreduce:{name}.input_kept"])
        assert bool(res[f"allreduce:{name}.returned_out"])


def test_allreduce_scalars_sums_in_one_call_and_spreads_nan(world):
    _, size, results = world
    summed = assert_equal_on_every_rank(results, "scalars:summed")
    ranks = np.arange(size)
    expected = [0.25 * (ranks + 1).sum(), (ranks + 1).sum(), (ranks % 2).sum()]
    np.testing.assert_array_equal(summed, np.array(expected, dtype=np.float64))
    nan = assert_equal_on_every_rank(results, "scalars:nan")
    assert nan.shape == (1,) and np.isnan(nan[0])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bcast_copies_the_root_buffer_everywhere(world, case):
    _, size, results = world
    name, shape, dtype, values = case
    for root in range(size):
        got = assert_equal_on_every_rank(results, f"bcast:{name}.root{root}")
        assert same_bits(got, rank_input(name, root, shape, dtype, values))
        for res in results:
            assert bool(res[f"bcast:{name}.root{root}.returned_buf"])


def test_repeated_reduction_is_bitwise_identical(world):
    _, _, results = world
    first = assert_equal_on_every_rank(results, "repeat:first")
    assert same_bits(first, assert_equal_on_every_rank(results, "repeat:second"))


def test_metered_counts_of_a_known_sequence_are_exact(world):
    _, _, results = world
    for rank, res in enumerate(results):
        assert bool(res["metering:rejected"]), "a rejected call must raise InputError"
        for phase, expected in METERING_EXPECTED.items():
            row = res[f"metering:{phase}"].tolist()
            assert row == list(expected.values()), f"rank {rank}, phase {phase}"
            calls = sum(v for k, v in expected.items() if k != "bytes")
            assert int(res[f"metering:{phase}.collectives"]) == calls


@pytest.mark.parametrize("case", BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_allgather_concatenates_the_blocks_in_rank_order(world, case):
    _, size, results = world
    name, rows, widths_of, dtype = case
    expected = np.concatenate([block_input(name, r, rows, w, dtype).reshape(-1) for r, w in enumerate(widths_of(size))])
    got = assert_equal_on_every_rank(results, f"blocks:{name}.gathered")
    assert same_bits(got, expected)
    assert all(bool(res[f"blocks:{name}.returned_out"]) for res in results)


@pytest.mark.parametrize("case", BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_reduce_scatter_gives_each_rank_its_block_of_the_sum(world, case):
    kind, size, results = world
    name, rows, widths_of, dtype = case
    counts = [rows * w for w in widths_of(size)]
    values = "int" if dtype.startswith("i") else "normal"
    total = rank_order_sum(f"whole:{name}", (sum(counts),), dtype, values, size)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    for rank, res in enumerate(results):
        got = res[f"blocks:{name}.scattered"]
        want = total[bounds[rank] : bounds[rank + 1]].reshape(rows, -1)
        if kind == "mpi" and size > 2 and values == "normal":  # the library's order
            tol = 1e-5 if dtype == "float32" else 1e-12
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(total).max(initial=0))
        else:
            assert same_bits(got, want), f"rank {rank}"


def test_block_collectives_are_metered(world):
    _, size, results = world
    for res in results:
        assert res["blocks:other"].tolist() == [len(BLOCK_CASES), len(BLOCK_CASES)]
        # bytes: the gathered array (16·P) and the reduced array (12·P), equal on every rank
        assert res["blocks:curvature"].tolist() == [1, 1, 16 * size + 12 * size, 2]


def test_numba_warmup_runs_rank0_first(world):
    _, _, results = world
    assert all(bool(res["warmup:saw_rank0_done"]) for res in results)


@pytest.mark.parametrize(
    "kind, size",
    [pytest.param("threads", 3, id="threads-3"), pytest.param("mpi", 3, id="mpi-3", marks=pytest.mark.mpi)],
)
def test_results_are_identical_run_to_run(kind, size, first_runs, tmp_path_factory):
    """A second, separate run of the whole suite gives bitwise the same bytes on every rank."""
    first = first_run(first_runs, kind, size, tmp_path_factory)
    again = run_backend(kind, size, tmp_path_factory.mktemp(f"{kind}{size}-again"))
    for rank in range(size):
        assert again[rank].keys() == first[rank].keys()
        for key, value in first[rank].items():
            assert same_bits(again[rank][key], value), f"rank {rank}, {key}"
