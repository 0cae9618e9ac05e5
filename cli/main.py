"""The ``hessfree`` command line.

Exit codes: 0 ok, 1 runtime or data error, 2 usage or configuration error, 3 training
diverged. Errors are one line on stderr (``error: ...``), never a traceback. Under MPI
only rank 0 prints and writes files.
"""

from __future__ import annotations

import sys

import click

from hessfree.cli.cost_cmd import cost_group
from hessfree.cli.errors import EPILOG, reported
from hessfree.cli.data_cmd import data_group
from hessfree.cli.experiment_cmd import experiment_group
from hessfree.cli.model_cmd import evaluate_command, predict_command
from hessfree.cli.plot_cmd import plot_command
from hessfree.errors import ConfigError

class _Group(click.Group):
    """The ``hessfree`` group: under an MPI launcher, a usage error (a bad option, which
    every rank meets alike) is printed by rank 0 only; the other ranks exit with the same
    code silently."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        from hessfree.cli.errors import lead_process

        if not standalone_mode or lead_process():
            return super().main(*args, standalone_mode=standalone_mode, **kwargs)
        try:
            super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.ClickException as exc:
            import time

            from hessfree.cli.errors import QUIET_RANK_GRACE_S

            time.sleep(QUIET_RANK_GRACE_S)  # let rank 0 print before mpirun ends the job
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            sys.exit(1)
        sys.exit(0)


@click.group(
    cls=_Group,
    context_settings=dict(help_option_names=["-h", "--help"]),
    epilog='Shell completion (bash): eval "$(_HESSFREE_COMPLETE=bash_source hessfree)" '
    "(zsh: zsh_source, fish: fish_source).",
)
@click.version_option(package_name="hessfree")
def main() -> None:
    """hessfree: Hessian-free training of deep neural networks, serial, threads or MPI."""


def _krylov_caps(methods) -> str:
    """"gn-cg 5, hess-cg 250, …": each Hessian-free method's default Krylov cap, from the method table."""
    return ", ".join(f"{m.value} {m.spec.krylov_max_iter}" for m in methods if m.is_hessian_free)


def _train_options():
    """The options of ``hessfree train``: choices and defaults from the enums and configs."""
    from hessfree.comm import Backend
    from hessfree.cost.network import Collective
    from hessfree.cost.presets import INTERCONNECTS
    from hessfree.data.loader import DatasetName
    from hessfree.methods import DampingRule, Method, NegativeCurvatureRule, Preconditioner, WarmStart
    from hessfree.models.mlp import Activation, Loss
    from hessfree.train import TrainConfig
    from hessfree.train.layout import Parallel
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
        click.option("--iterations", type=int, help=f"Total HF outer iterations (default {t.iterations}; Hessian-free methods only)."),
        click.option("--epochs", type=int, help=f"Total epochs (default {t.epochs}; first-order methods only)."),
        click.option("--batch-size", type=int, help="Curvature batch (HF) or mini-batch (first-order), global over ranks (default: the method's)."),
        click.option("--cg-max-iter", type=int, help=f"Krylov iteration cap per solve (default: the method's: {_krylov_caps(Method)}; Hessian-free methods only)."),
        click.option("--damping", type=float, help=f"Initial Levenberg-Marquardt λ (default {t.damping}; Hessian-free methods only)."),
        click.option("--damping-min", type=float, help=f"The smallest λ the damping rule may reach (default {t.damping_min:g}; Hessian-free methods only)."),
        click.option("--backtracking/--no-backtracking", default=None, help="CG-backtracking: walk back over the Krylov iterates while the objective decreases (default: the method's; off for gn-cg, on for the other Hessian-free methods)."),
        click.option("--lr", type=float, help=f"Learning rate (default {t.lr}; first-order methods only)."),
        click.option("--momentum", type=float, help=f"Momentum (default {t.momentum}; msgd only)."),
        click.option("--weight-decay", type=float, help=f"L2 weight decay μ (default {t.weight_decay})."),
        click.option("--dtype", type=click.Choice(choices(DType)), help=f"Default {r.dtype.value}."),
        click.option("--seed", type=int),
        click.option("--samples", type=int, help="Use only the first N training samples (or generate N)."),
        click.option("--validation", type=float, help="Hold out this fraction of training data for evaluation."),
        click.option("--autoencoder/--no-autoencoder", default=None, help="Train to reproduce the inputs (outputs as wide as the inputs); the error column is the squared reconstruction error per image."),
        click.option("--comm", type=click.Choice(choices(Backend)), help="Backend (default auto: mpi under mpirun, else threads with --ranks > 1, else serial)."),
        click.option("--ranks", type=int, help="Number of thread ranks with --comm threads."),
        click.option("--parallel", type=click.Choice(choices(Parallel)), help=f"How ranks share the work: data (each rank a shard of the data, the whole network) or model (each rank all the data, a slice of every layer's units) (default {r.parallel.value})."),
        click.option("--comm-timeout", type=float, help=f"Seconds a collective may wait before the job fails (default {r.comm_timeout:g})."),
        click.option("--metrics", type=click.Path(dir_okay=False), help="Write JSON lines: config, one per iteration, result."),
        click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Save the full training state here."),
        click.option("--checkpoint-every", type=int, help=f"Save every N iterations (default {r.checkpoint_every})."),
        click.option("--resume/--no-resume", default=None, help="Continue from the checkpoint in --checkpoint-dir (on any rank count or backend)."),
        click.option("--overwrite/--no-overwrite", default=None, help="Replace the checkpoints already in --checkpoint-dir (a new run there is refused otherwise)."),
        click.option("--save-model", type=click.Path(dir_okay=False), help="Write the trained network to this model file (.hfm) for hessfree evaluate/predict."),
        click.option("--quiet/--no-quiet", default=None, help="Print only the final result."),
        click.option("-v", "--verbose", count=True, default=None, help="More columns per progress line (repeatable)."),
        click.option("--debug", is_flag=True, default=False, help="Print the traceback of an internal error."),
        click.option("--simulate", type=click.Choice(list(INTERCONNECTS)), help="Also report simulated cluster time on this interconnect."),
        click.option("--sim-latency", type=float, help="Simulated latency α in seconds (overrides the preset)."),
        click.option("--sim-bandwidth", type=float, help="Simulated bandwidth in bytes/s (overrides the preset)."),
        click.option("--sim-collective", type=click.Choice(choices(Collective)), help=f"Allreduce algorithm charged ({r.sim_collective.value})."),
        click.option("--sim-compute-scale", type=float, help="Multiply measured compute: this machine's FLOP/s ÷ the simulated node's (1)."),
        click.option("--negative-curvature", type=click.Choice(choices(NegativeCurvatureRule)), help="What an HF step does with negative curvature: off, scaled, curvilinear (default: the method's; scaled for newton-mr, else off)."),
        click.option("--damping-rule", type=click.Choice(choices(DampingRule)), help=f"lm, or indefinite: λ at least 1.5× the most negative curvature of the previous solve (default {t.damping_rule.value})."),
        click.option("--warm-start-source", type=click.Choice(choices(WarmStart)), help=f"Krylov start: the last iterate (Martens), the chosen direction (the paper) or zero (default {t.warm_start_source.value})."),
        click.option("--preconditioner", type=click.Choice(choices(Preconditioner)), help=f"Krylov preconditioner: none, or martens (the empirical Fisher diagonal to the power 3/4; default {t.preconditioner.value})."),
        click.option("--gradient-sample", type=int, help="Iteration k takes its gradient and line search on the first ⌊N·r^k⌋ training samples, nested, all of them once that reaches n (default: the method's; 0, the whole set; README, \"Speed to accuracy\"; Hessian-free methods only)."),
        click.option("--gradient-batch", type=int, help="Iteration k takes its gradient and line search on window k of N consecutive training samples, cycled through the data; the training and test sets are evaluated once per pass and at the last iteration (default: the method's; 0 or at least n, the whole set; measured with --damping-min 0.01; README, \"Speed to accuracy\"; Hessian-free methods only)."),
        click.option("--sample-growth", type=float, help=f"r, the gradient sample's growth per iteration (default {t.sample_growth:g}; with --gradient-sample)."),
        click.option("--init-scale", type=float, help=f"θ₀ = s × the initial parameters, for saddle studies (default {t.init_scale:g})."),
    ]


def train_options(fn):
    for option in reversed(_train_options()):
        fn = option(fn)
    return fn


#: settings that only some methods use: key → (does it apply to this method?, why not)
def _applicability():
    from hessfree.methods import Update

    hf = ("iterations", "cg_max_iter", "cg_rtol", "progress_tol", "damping", "damping_min", "damping_max",
          "damping_increase", "damping_decrease", "rho_low", "rho_high", "warm_start", "backtracking", "negative_curvature", "damping_rule", "warm_start_source",
          "preconditioner", "armijo_c", "armijo_shrink", "max_line_search", "gradient_sample", "sample_growth", "gradient_batch")
    rules = {key: (lambda m: m.is_hessian_free, "a first-order method; it applies to the Hessian-free methods only") for key in hf}
    rules["iterations"] = (lambda m: m.is_hessian_free, "a first-order method, whose run length is --epochs")
    rules["epochs"] = (lambda m: not m.is_hessian_free, "a Hessian-free method, whose run length is --iterations")
    rules["lr"] = (lambda m: not m.is_hessian_free, "a Hessian-free method: its steps are sized by the line search")
    rules["momentum"] = (lambda m: m.spec.update is Update.MOMENTUM, "it applies to msgd only")
    for key in ("beta1", "beta2", "adam_eps"):
        rules[key] = (lambda m: m.spec.update in (Update.ADAM, Update.ADAMW), "it applies to adam and adamw only")
    return rules


def check_applicable(config, given: dict[str, str]) -> None:
    """ConfigError naming every setting the user gave that this run would ignore.

    ``given`` maps each key the user set (flags and config file) to how to name it
    (``--epochs`` or ``epochs (in run.toml)``).
    """
    method = config.train.method
    problems = []
    for key, (applies, why) in _applicability().items():
        if key in given and not applies(method):
            problems.append(f"{given[key]} does not apply to {method.value} ({why})")
    needs = {"checkpoint_every": ("checkpoint_dir", "--checkpoint-dir"), "overwrite": ("checkpoint_dir", "--checkpoint-dir"),
             "sim_collective": ("simulate", "--simulate"), "sim_compute_scale": ("simulate", "--simulate")}
    for key, (other, flag) in needs.items():
        if key in given and getattr(config, other) in (None, False) and (key != "overwrite" or config.overwrite):
            problems.append(f"{given[key]} needs {flag}")
    if "sample_growth" in given and method.is_hessian_free and not config.train.sample_start:
        problems.append(f"{given['sample_growth']} needs --gradient-sample (every gradient is on the whole training set)")
    if "verbose" in given and "quiet" in given and config.quiet and config.verbose:
        problems.append(f"{given['verbose']} cannot be combined with {given['quiet']}")
    if problems:
        raise ConfigError("; ".join(problems))


@main.command(epilog=EPILOG)
@train_options
def train(config_file, debug, **options) -> None:
    """Train a network with Hessian-free optimization (or a first-order baseline)."""
    from hessfree.cli.run import run_training
    from hessfree.train.runconfig import load_toml, make_run_config

    with reported(debug) as warnings:
        values = load_toml(config_file) if config_file else {}
        given = {str(k).replace("-", "_"): f"{k} (in {config_file})" for k in values}
        flags = {k: v for k, v in options.items() if v is not None and not (k == "verbose" and v == 0)}
        given.update({k: "--" + k.replace("_", "-") for k in flags})
        values.update(flags)
        check_applicable(make_run_config(values), given)
        code = run_training(values, echo=click.echo)
        if code:
            warnings.clear()  # the run's one error line says what happened
    sys.exit(code)


main.add_command(data_group)
main.add_command(cost_group)
main.add_command(experiment_group)
main.add_command(plot_command)
main.add_command(evaluate_command)
main.add_command(predict_command)
