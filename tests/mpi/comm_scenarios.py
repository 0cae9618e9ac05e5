"""Communicator scenarios written once and run on every backend.

Each scenario is ``fn(comm, workdir) -> dict[str, numpy array]``. Serial and thread runs
call them in the pytest process; ``comm_suite.py`` calls them under ``mpirun`` and saves
each rank's dict to ``rank<r>.npz``. ``tests/test_comm_suite.py`` checks the per-rank
results of every backend with the same functions, against numpy references rebuilt from
``rank_input``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hessfree.comm import Communicator, Phase
from hessfree.errors import InputError

SEED = 20_240_611

#: (name, shape, dtype, kind). "dyadic" values are multiples of 1/64 below 2**10, so
#: their sums are exact in any order (checked exactly even under MPI, whose reduction
#: order is the library's); "normal" values are checked bitwise against the rank-order
#: sum where the order is ours (serial, threads) and to rounding under MPI.
CASES: tuple[tuple[str, tuple[int, ...], str, str], ...] = (
    ("f64_normal", (37,), "float64", "normal"),
    ("f64_matrix", (5, 7), "float64", "normal"),
    ("f32_normal", (1000,), "float32", "normal"),
    ("f64_dyadic", (4, 3, 2), "float64", "dyadic"),
    ("f32_dyadic", (17,), "float32", "dyadic"),
    ("i64", (9,), "int64", "int"),
    ("i32", (3, 3), "int32", "int"),
    ("scalar0d", (), "float64", "normal"),
    ("empty", (0,), "float64", "normal"),
    ("empty2d", (3, 0), "int64", "int"),
)


def rank_input(case: str, rank: int, shape: tuple[int, ...], dtype: str, kind: str) -> np.ndarray:
    """The array ``rank`` contributes for ``case``: deterministic in (case, rank)."""
    rng = np.random.default_rng([SEED, rank, sum(map(ord, case))])
    if kind == "normal":
        values = rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, size=shape)
    elif kind == "dyadic":
        values = rng.integers(-(2**16), 2**16, size=shape) / 64.0
    else:
        values = rng.integers(-(2**20), 2**20, size=shape)
    return np.array(values, dtype=dtype, order="C")  # keeps 0-d arrays 0-d


def allreduce_scenario(comm: Communicator, workdir: Path) -> dict[str, np.ndarray]:
    """Every case reduced into a new array, and again in place; inputs left untouched."""
    results: dict[str, np.ndarray] = {}
    for name, shape, dtype, kind in CASES:
        x = rank_input(name, comm.rank, shape, dtype, kind)
        original = x.copy()
        results[f"{name}.out"] = comm.allreduce(x)
        results[f"{name}.input_kept"] = np.array(np.array_equal(x, original))
        inplace = x.copy()
        returned = comm.allreduce(inplace, out=inplace)
        results[f"{name}.inplace"] = inplace
        results[f"{name}.returned_out"] = np.array(returned is inplace)
    return results


def scalars_scenario(comm: Communicator, workdir: Path) -> dict[str, np.ndarray]:
    """A loss-like float, a count and a flag in one collective; then a NaN that must spread."""
    r = comm.rank
    summed = comm.allreduce_scalars(0.25 * (r + 1), r + 1, np.int64(r % 2))
    spread = comm.allreduce_scalars(float("nan") if r == comm.size - 1 else 1.0)
    return {"summed": summed, "nan": spread}


def bcast_scenario(comm: Communicator, workdir: Path) -> dict[str, np.ndarray]:
    """Each case broadcast from each root; the root's own buffer must stay as it was."""
    results: dict[str, np.ndarray] = {}
    for name, shape, dtype, kind in CASES:
        for root in range(comm.size):
            buf = rank_input(name, comm.rank, shape, dtype, kind)
            returned = comm.bcast(buf, root=root)
            results[f"{name}.root{root}"] = buf
            results[f"{name}.root{root}.returned_buf"] = np.array(returned is buf)
    return results


def repeat_scenario(comm: Communicator, workdir: Path) -> dict[str, np.ndarray]:
    """The same reduction twice in one run: bitwise equal (no hidden state)."""
    x = rank_input("repeat", comm.rank, (513,), "float64", "normal")
    return {"first": comm.allreduce(x), "second": comm.allreduce(x)}


#: The known sequence of ``metering_scenario`` and its exact counts.
METERING_EXPECTED = {
    "gradient": {"allreduce": 2, "allreduce_scalars": 1, "bcast": 0, "barrier": 0, "bytes": 800 + 16 + 24},
    "curvature": {"allreduce": 5, "allreduce_scalars": 0, "bcast": 0, "barrier": 0, "bytes": 5 * 28},
    "line_search": {"allreduce": 0, "allreduce_scalars": 4, "bcast": 0, "barrier": 0, "bytes": 3 * 16 + 8},
    "other": {"allreduce": 1, "allreduce_scalars": 0, "bcast": 1, "barrier": 2, "bytes": 56 + 0},
}
_COUNT_FIELDS = ("allreduce", "allreduce_scalars", "bcast", "barrier", "bytes")


def metering_scenario(comm: Communicator, workdir: Path) -> dict[str, np.ndarray]:
    """A known sequence of collectives in the four phases (see ``METERING_EXPECTED``)."""
    start = comm.counts()
    with comm.phase(Phase.GRADIENT):
        comm.allreduce(np.ones((10, 10)))  # 800 bytes
        comm.allreduce_scalars(1.0, 2.0, 3.0)  # 24 bytes
        with comm.phase(Phase.LINE_SEARCH):
            comm.allreduce_scalars(1.0)  # 8 bytes, counted under line_search
        comm.allreduce(np.ones(4, dtype=np.int32))  # 16 bytes, back under gradient
    with comm.phase(Phase.CURVATURE):
        v = np.ones(7, dtype=np.float32)
        for _ in range(5):
            comm.allreduce(v, out=v)  # 28 bytes each
    with comm.phase(Phase.LINE_SEARCH):
        for _ in range(3):
            comm.allreduce_scalars(0.5, 1.0)  # 16 bytes each
    comm.bcast(np.arange(7, dtype=np.int64))  # 56 bytes, phase other
    comm.barrier()
    comm.allreduce(np.zeros(0))  # empty: a collective of 0 bytes
    comm.barrier()
    try:  # rejected before it starts: not a collective, not counted
        comm.allreduce([1.0, 2.0])  # type: ignore[arg-type]
        rejected = False
    except InputError:
        rejected = True
    counts = (comm.counts() - start).as_dict()
    results = {"rejected": np.array(rejected)}
    for phase, row in counts.items():
        results[phase] = np.array([row[f] for f in _COUNT_FIELDS], dtype=np.int64)
        results[f"{phase}.collectives"] = np.array(row["collectives"])
    return results


def warmup_scenario(comm: Communicator, workdir: Path) -> dict[str, np.ndarray]:
    """warm_numba_cache runs rank 0's function to completion before anyone else's."""
    from hessfree.comm import warm_numba_cache

    marker = workdir / f"warm-{comm.size}.done"

    def compile_and_cache() -> bool:
        if comm.rank == 0:
            time.sleep(0.1)  # a slow compile: the others must still wait for it
            marker.write_text("compiled")
            return True
        return marker.exists()

    return {"saw_rank0_done": np.array(warm_numba_cache(comm, compile_and_cache))}


#: (name, rows, widths per rank as a function of the size, dtype) for the block collectives
#: of model parallelism: uneven blocks, an empty block, a whole-empty case
BLOCK_CASES = (
    ("f64_uneven", 3, lambda size: [r + 2 for r in range(size)], "float64"),
    ("f32_even", 4, lambda size: [5] * size, "float32"),
    ("i64_one_empty", 2, lambda size: [0 if r == size - 1 else 3 for r in range(size)], "int64"),
    ("f64_all_empty", 5, lambda size: [0] * size, "float64"),
)


def block_input(case: str, rank: int, rows: int, width: int, dtype: str) -> np.ndarray:
    """Rank ``rank``'s (rows × width) block of ``case`` (deterministic)."""
    kind = "int" if dtype.startswith("i") else "normal"
    return rank_input(f"block:{case}", rank, (rows, width), dtype, kind)


def blocks_scenario(comm: Communicator, workdir: Path) -> dict[str, np.ndarray]:
    """Allgather of every rank's (rows × width) block into one flat array, and
    reduce-scatter of every rank's whole array; with the counts metered."""
    results: dict[str, np.ndarray] = {}
    start = comm.counts()
    for name, rows, widths_of, dtype in BLOCK_CASES:
        widths = widths_of(comm.size)
        counts = [rows * w for w in widths]
        block = block_input(name, comm.rank, rows, widths[comm.rank], dtype)
        gathered = np.full(sum(counts), -1, dtype=dtype)
        returned = comm.allgather(block, gathered, counts)
        results[f"{name}.gathered"] = gathered
        results[f"{name}.returned_out"] = np.array(returned is gathered)
        whole = rank_input(f"whole:{name}", comm.rank, (sum(counts),), dtype, "int" if dtype.startswith("i") else "normal")
        mine = np.empty((rows, widths[comm.rank]), dtype=dtype)
        comm.reduce_scatter(whole, mine, counts)
        results[f"{name}.scattered"] = mine
    with comm.phase(Phase.CURVATURE):
        comm.allgather(np.ones(2), np.empty(2 * comm.size), [2] * comm.size)  # 16·P bytes
        comm.reduce_scatter(np.ones(3 * comm.size, dtype=np.float32), np.empty(3, dtype=np.float32), [3] * comm.size)
    counts = comm.counts() - start
    results["other"] = np.array([counts.other.allgather, counts.other.reduce_scatter], dtype=np.int64)
    results["curvature"] = np.array([counts.curvature.allgather, counts.curvature.reduce_scatter,
                                     counts.curvature.bytes, counts.curvature.collectives], dtype=np.int64)
    return results


SCENARIOS = {
    "allreduce": allreduce_scenario,
    "scalars": scalars_scenario,
    "bcast": bcast_scenario,
    "repeat": repeat_scenario,
    "metering": metering_scenario,
    "warmup": warmup_scenario,
    "blocks": blocks_scenario,
}


def run_all(comm: Communicator, workdir: Path) -> dict[str, np.ndarray]:
    """Every scenario in a fixed order, results keyed ``"<scenario>:<key>"``."""
    results: dict[str, np.ndarray] = {}
    for name, scenario in SCENARIOS.items():
        for key, value in scenario(comm, workdir).items():
            results[f"{name}:{key}"] = np.asarray(value)
    results["meta:rank"] = np.array(comm.rank)
    results["meta:size"] = np.array(comm.size)
    results["meta:parallel_kernels"] = np.array(comm.allows_parallel_kernels)
    return results
