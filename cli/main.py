"""The ``hessfree`` command line.

Exit codes: 0 ok, 1 runtime or data error, 2 usage or configuration error, 3 training
diverged. Errors are one line on stderr (``error: ...``), never a traceback. Under MPI
only rank 0 prints and writes files.
"""

from __future__ import annotations

import sys
import tomllib

import click

from hessfree.cli.cost_cmd import cost_group
from hessfree.cli.data_cmd import data_group
from hessfree.errors import ConfigError, HessfreeError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_DIVERGED = 0, 1, 2, 3


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings=dict(help_option_names=["-h", "--help"]))
@click.version_option(package_name="hessfree")
def main() -> None:
    """hessfree: Hessian-free training of deep neural networks, serial, threads or MPI."""


def _load_toml(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):  # allow a [train] table
            flat.update(value)
        else:
            flat[key] = value
    return flat


TRAIN_OPTIONS = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with any of these keys; flags override it."),
    click.option("--dataset", help="digits (default, embedded), mnist, fashion-mnist, synthetic, timit-like, npz."),
    click.option("--data-dir", help="Directory of the dataset files (mnist, fashion-mnist) or the .npz path."),
    click.option("--hidden", help="Hidden layer widths, e.g. 400,150 (default 100)."),
    click.option("--activation", type=click.Choice(["tanh", "sigmoid", "relu", "softplus"])),
    click.option("--loss", type=click.Choice(["softmax_cross_entropy", "logistic_cross_entropy", "squared_error"])),
    click.option("--method", type=click.Choice(["gn-cg", "hess-cg", "bicgstab", "hybrid", "sgd", "msgd"]), help="Default bicgstab."),
    click.option("--iterations", type=int, help="Total HF outer iterations (default 30)."),
    click.option("--epochs", type=int, help="Total SGD epochs (default 10)."),
    click.option("--batch-size", type=int, help="Curvature batch (HF) or mini-batch (SGD), global over ranks."),
    click.option("--cg-max-iter", type=int, help="Krylov iteration cap (default 250 for CG, 50 for Bi-CG-STAB)."),
    click.option("--damping", type=float, help="Initial Levenberg-Marquardt λ (default 1.0)."),
    click.option("--lr", type=float, help="SGD learning rate (default 0.1)."),
    click.option("--momentum", type=float, help="MSGD momentum (default 0.9)."),
    click.option("--weight-decay", type=float, help="L2 weight decay μ (default 0)."),
    click.option("--dtype", type=click.Choice(["float32", "float64"])),
    click.option("--seed", type=int),
    click.option("--samples", type=int, help="Use only the first N training samples (or generate N)."),
    click.option("--validation", type=float, help="Hold out this fraction of training data for evaluation."),
    click.option("--comm", type=click.Choice(["serial", "threads", "mpi", "auto"]), help="Backend (default auto: mpi under mpirun, else serial or threads)."),
    click.option("--ranks", type=int, help="Number of thread ranks with --comm threads."),
    click.option("--comm-timeout", type=float, help="Seconds a collective may wait before the job fails (default 300)."),
    click.option("--metrics", type=click.Path(dir_okay=False), help="Write JSON lines: config, one per iteration, result."),
    click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Save the full training state here."),
    click.option("--checkpoint-every", type=int, help="Save every N iterations (default 1)."),
    click.option("--resume/--no-resume", default=None, help="Continue from the checkpoint in --checkpoint-dir."),
    click.option("--quiet/--no-quiet", default=None, help="Print only the final result."),
    click.option("--simulate", type=click.Choice(["omni-path", "ethernet-10g"]), help="Also report simulated cluster time on this interconnect."),
    click.option("--sim-latency", type=float, help="Simulated latency α in seconds (overrides the preset)."),
    click.option("--sim-bandwidth", type=float, help="Simulated bandwidth in bytes/s (overrides the preset)."),
    click.option("--sim-collective", type=click.Choice(["ring", "recursive-doubling", "tree"]), help="Allreduce algorithm charged (ring)."),
    click.option("--sim-compute-scale", type=float, help="Multiply measured compute: this machine's FLOP/s ÷ the simulated node's (1)."),
]


def train_options(fn):
    for option in reversed(TRAIN_OPTIONS):
        fn = option(fn)
    return fn


@main.command(epilog="Exit codes: 0 ok, 1 runtime or data error, 2 usage or configuration error, 3 training diverged.")
@train_options
def train(config_file, **options) -> None:
    """Train a network with Hessian-free optimization (or an SGD baseline)."""
    from hessfree.cli.run import run_training

    try:
        values = _load_toml(config_file) if config_file else {}
        values.update({k: v for k, v in options.items() if v is not None})
        code = run_training(values, echo=click.echo)
    except HessfreeError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_RUNTIME)
    except Exception as exc:  # a bug, not a user error: still one line and a documented code
        fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_RUNTIME)
    sys.exit(code)


main.add_command(data_group)
main.add_command(cost_group)
