"""Under mpirun: a gn-cg run on a growing gradient sample, data- and model-parallel; each
rank writes its records as JSON.

    mpirun -n P python -m mpi4py tests/mpi/train_sampled.py OUT_DIR CONFIG_JSON
"""

import json
import sys
from pathlib import Path

from hessfree.comm import make_comm
from hessfree.train import make_run_config
from hessfree.train.run import run


def main(out: str, config: str) -> None:
    comm = make_comm("mpi", timeout=60)
    result = {}
    for parallel in ("data", "model"):
        history = run(make_run_config({**json.loads(config), "parallel": parallel}), comm=comm).history
        result[parallel] = [record.as_dict() for record in history]
    Path(out, f"rank{comm.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
