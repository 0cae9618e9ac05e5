"""Under mpirun -n 2: ``hessfree train`` (the CLI's run function) for every golden case."""

import sys

from engine_cases import CASES, values

from hessfree.cli.run import run_training

if __name__ == "__main__":
    out = sys.argv[1]
    for method in CASES:
        run_training(values(method, f"{out}/{method}-mpi2.jsonl"), echo=lambda *a, **k: None)
