"""Under mpirun: ``hessfree train ARGS`` as the CLI runs it, with one rank failing mid-run.

    mpirun -n P python -m mpi4py tests/mpi/train_fault.py MODE RANK AT train ARGS...

MODE ``stall`` (the rank sleeps far longer than any test), ``kill`` (it is killed by
SIGKILL) or ``raise`` (it raises an error only it meets), on rank RANK, when iteration AT
ends (after its records are computed, before the ranks agree on whether to stop).
"""

import importlib
import os
import signal
import sys
import time

from hessfree.cli.main import main

fit_module = importlib.import_module("hessfree.train.fit")  # the module (hessfree.train.fit is also the function)


def inject(mode: str, rank: int, at: int) -> None:
    original = fit_module._agreed
    calls = {"n": 0}

    def agreed(comm, stop):
        calls["n"] += 1
        if comm.rank == rank and calls["n"] == at:
            if mode == "stall":
                time.sleep(3600)
            elif mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif mode == "raise":
                raise RuntimeError(f"injected failure on rank {rank}")
        return original(comm, stop)

    fit_module._agreed = agreed


if __name__ == "__main__":
    mode, rank, at, *args = sys.argv[1:]
    inject(mode, int(rank), int(at))
    main(args, prog_name="hessfree")
