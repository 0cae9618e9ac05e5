"""Under mpirun: ``hessfree train ARGS`` as the CLI runs it (``python -m mpi4py -m hessfree``)."""

import sys

from hessfree.cli.main import main

if __name__ == "__main__":
    main(sys.argv[1:], prog_name="hessfree")
