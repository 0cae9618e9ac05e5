"""MPI failure handling, really launched with mpirun from this serial pytest.

Each job runs under its own wall-clock limit (``launch.run_mpi``), so a regression that
hangs is a failed test. The collective results of MPIComm are checked by the shared
suite in ``test_comm_suite.py`` (mpi-2, mpi-3).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "mpi"))

from launch import run_mpi  # noqa: E402

pytestmark = pytest.mark.mpi


def test_a_rank_that_raises_ends_every_rank_within_seconds():
    # the deadline is far away: what ends the job is mpi4py's abort on the uncaught error
    run = run_mpi(3, "comm_fault.py", "raise", "120", limit=60)
    assert run.returncode != 0
    assert "injected failure on rank 1" in run.output
    assert run.seconds < 20


@pytest.mark.parametrize("mode", ["exit", "sleep"])
def test_a_rank_that_exits_early_or_stalls_trips_the_deadline(mode):
    run = run_mpi(2, "comm_fault.py", mode, "3", limit=60)
    assert run.returncode != 0
    assert "CommError" in run.output
    assert "allreduce (phase curvature) timed out after 3 s" in run.output
    assert run.seconds < 25
