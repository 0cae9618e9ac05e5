"""Under mpirun: the negative-curvature cases of tests/nc_cases.py; each rank writes its
records as JSON.

    mpirun -n P python -m mpi4py tests/mpi/train_nc.py OUT_DIR
"""

import json
import sys
from pathlib import Path

from hessfree.comm import make_comm
from hessfree.train import make_run_config
from hessfree.train.run import run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nc_cases import NC_CASES  # noqa: E402


def main(out: str) -> None:
    comm = make_comm("mpi", timeout=60)
    result = {}
    for name, config in NC_CASES.items():
        history = run(make_run_config(config), comm=comm).history
        result[name] = [record.as_dict() for record in history]
    Path(out, f"rank{comm.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
