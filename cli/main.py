"""The ``hessfree`` command line.

Exit codes: 0 ok, 1 runtime or data error, 2 usage or configuration error, 3 training
diverged. Errors are one line on stderr (``error: ...``), never a traceback. Under MPI
only rank 0 prints and writes files.
"""

from __future__ import annotations

import sys

import click

from hessfree.cli.cost_cmd import cost_group
from hessfree.cli.data_cmd import data_group
from hessfree.cli.experiment_cmd import experiment_group
from hessfree.cli.plot_cmd import plot_command
from hessfree.errors import HessfreeError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_DIVERGED = 0, 1, 2, 3


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings=dict(help_option_names=["-h", "--help"]))
@click.version_option(package_name="hessfree")
def main() -> None:
    """hessfree: Hessian-free training of deep neural networks, serial, threads or MPI."""


def _train_options():
    """The options of ``hessfree train``: choices and defaults from the enums and configs."""
    from hessfree.comm import Backend
    from hessfree.cost.network import Collective
    from hessfree.cost.presets import INTERCONNECTS
    from hessfree.data.loader import DatasetName
    from hessfree.methods import Method
    from hessfree.models.mlp import Activation, Loss
    from hessfree.train import TrainConfig
    from hessfree.train.runconfig import DType, RunConfig
    from hessfree.validate import choices

    t, r = TrainConfig(), RunConfig()
    return [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file with any of these keys (top level or [train]); flags override it."),
        click.option("--dataset", type=click.Choice(choices(DatasetName)), help=f"Default {r.dataset.value} (embedded)."),
        click.option("--data-dir", help="Directory of the dataset files (mnist, fashion-mnist) or the .npz path."),
        click.option("--hidden", help=f"Hidden layer widths, e.g. 400,150 (default {','.join(map(str, r.hidden))})."),
        click.option("--activation", help=f"{', '.join(choices(Activation))}: one for every hidden layer, or one per layer, comma-separated (default {r.activation})."),
        click.option("--loss", type=click.Choice(choices(Loss))),
        click.option("--method", type=click.Choice(choices(Method)), help=f"Default {t.method.value}."),
        click.option("--iterations", type=int, help=f"Total HF outer iterations (default {t.iterations})."),
        click.option("--epochs", type=int, help=f"Total first-order epochs (default {t.epochs})."),
        click.option("--batch-size", type=int, help="Curvature batch (HF) or mini-batch (first-order), global over ranks (default: the method's)."),
        click.option("--cg-max-iter", type=int, help="Krylov iteration cap (default: the method's)."),
        click.option("--damping", type=float, help=f"Initial Levenberg-Marquardt λ (default {t.damping})."),
        click.option("--lr", type=float, help=f"First-order learning rate (default {t.lr})."),
        click.option("--momentum", type=float, help=f"MSGD momentum (default {t.momentum})."),
        click.option("--weight-decay", type=float, help=f"L2 weight decay μ (default {t.weight_decay})."),
        click.option("--dtype", type=click.Choice(choices(DType)), help=f"Default {r.dtype.value}."),
        click.option("--seed", type=int),
        click.option("--samples", type=int, help="Use only the first N training samples (or generate N)."),
        click.option("--validation", type=float, help="Hold out this fraction of training data for evaluation."),
        click.option("--comm", type=click.Choice(choices(Backend)), help="Backend (default auto: mpi under mpirun, else threads with --ranks > 1, else serial)."),
        click.option("--ranks", type=int, help="Number of thread ranks with --comm threads."),
        click.option("--comm-timeout", type=float, help=f"Seconds a collective may wait before the job fails (default {r.comm_timeout:g})."),
        click.option("--metrics", type=click.Path(dir_okay=False), help="Write JSON lines: config, one per iteration, result."),
        click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Save the full training state here."),
        click.option("--checkpoint-every", type=int, help=f"Save every N iterations (default {r.checkpoint_every})."),
        click.option("--resume/--no-resume", default=None, help="Continue from the checkpoint in --checkpoint-dir."),
        click.option("--quiet/--no-quiet", default=None, help="Print only the final result."),
        click.option("--simulate", type=click.Choice(list(INTERCONNECTS)), help="Also report simulated cluster time on this interconnect."),
        click.option("--sim-latency", type=float, help="Simulated latency α in seconds (overrides the preset)."),
        click.option("--sim-bandwidth", type=float, help="Simulated bandwidth in bytes/s (overrides the preset)."),
        click.option("--sim-collective", type=click.Choice(choices(Collective)), help=f"Allreduce algorithm charged ({r.sim_collective.value})."),
        click.option("--sim-compute-scale", type=float, help="Multiply measured compute: this machine's FLOP/s ÷ the simulated node's (1)."),
    ]


def train_options(fn):
    for option in reversed(_train_options()):
        fn = option(fn)
    return fn


@main.command(epilog="Exit codes: 0 ok, 1 runtime or data error, 2 usage or configuration error, 3 training diverged.")
@train_options
def train(config_file, **options) -> None:
    """Train a network with Hessian-free optimization (or a first-order baseline)."""
    from hessfree.cli.run import run_training
    from hessfree.train.runconfig import load_toml

    try:
        values = load_toml(config_file) if config_file else {}
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
main.add_command(experiment_group)
main.add_command(plot_command)
