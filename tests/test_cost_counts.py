"""The model's collectives and bytes per iteration equal the metering layer's, exactly,
for every method, backend (serial, threads, MPI) and P ∈ {1, 2, 3}."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hessfree.comm import SerialComm, run_threads
from hessfree.comm.launch import mpi_environment, mpirun_command

sys.path.insert(0, str(Path(__file__).parent))
from mpi.launch import find_mpirun  # noqa: E402
from _cost_counts_run import METHODS, compare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _assert_equal(pairs):
    assert pairs, "no iterations ran"
    for predicted, metered in pairs:
        assert predicted == metered
        assert metered["gradient"]["collectives"] >= 1


@pytest.mark.parametrize("method", METHODS)
def test_counts_serial(method):
    _assert_equal(compare(SerialComm(), method))


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_counts_threads(method, size):
    per_rank = run_threads(lambda comm: compare(comm, method), size)
    for pairs in per_rank:
        _assert_equal(pairs)


def test_counts_without_test_set_and_float32():
    _assert_equal(compare(SerialComm(), "bicgstab", test=False))
    _assert_equal(compare(SerialComm(), "gn-cg", dtype="float32"))


def test_prediction_differs_from_metering_when_wrong():
    """The comparison can fail: a miscounted product changes the prediction."""
    pairs = compare(SerialComm(), "bicgstab")
    predicted, metered = pairs[0]
    predicted["curvature"]["allreduce"] += 1
    assert predicted != metered


@pytest.mark.mpi
def test_counts_mpi_two_ranks():
    cmd = mpirun_command(2, str(ROOT / "tests" / "_cost_counts_run.py"), mpirun=find_mpirun())
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=mpi_environment(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(results) == set(METHODS) | {"bicgstab-float32"}
    for pairs in results.values():
        _assert_equal([tuple(p) for p in pairs])
