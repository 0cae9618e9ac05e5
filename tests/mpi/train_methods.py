"""Under mpirun: a few iterations of every method; each rank writes its records as JSON.

    mpirun -n P python -m mpi4py tests/mpi/train_methods.py OUT_DIR [data|model]

The optional last argument is the layout (``parallel``; data-parallel by default).
"""

import json
import sys
from pathlib import Path

from hessfree.comm import make_comm
from hessfree.train import make_run_config
from hessfree.train.run import run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_cases import METHODS, case_config  # noqa: E402


def main(out: str, parallel: str = "data") -> None:
    comm = make_comm("mpi", timeout=60)
    result = {}
    for method in METHODS:
        history = run(make_run_config(case_config(method, parallel=parallel)), comm=comm).history
        result[method] = [record.as_dict() for record in history]
    Path(out, f"rank{comm.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
