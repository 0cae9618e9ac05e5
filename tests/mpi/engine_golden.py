"""``hessfree train`` (the CLI's run function) for every golden case: under mpirun -n 2
(``engine_golden.py OUT``), or serially or on two thread ranks in one process
(``engine_golden.py OUT serial|threads2``). Writes OUT/<method>-<backend>.jsonl."""

import sys

from engine_cases import CASES, values

from hessfree.cli.run import run_training

BACKENDS = {"mpi2": {}, "serial": {}, "threads2": dict(comm="threads", ranks=2)}

if __name__ == "__main__":
    out = sys.argv[1]
    backend = sys.argv[2] if len(sys.argv) > 2 else "mpi2"
    for method in CASES:
        code = run_training(values(method, f"{out}/{method}-{backend}.jsonl", **BACKENDS[backend]), echo=lambda *a, **k: None)
        if code:
            sys.exit(f"{method} on {backend}: exit code {code}")
