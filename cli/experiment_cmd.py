"""``hessfree experiment``: run a declared experiment (resumable) and report it.

Exit codes: 0 ok, 1 runtime or data error, 2 usage or experiment-file error. Errors are
one line ``error: ...`` on stderr.
"""

from __future__ import annotations

from pathlib import Path

import click

from hessfree.cli.errors import reported
from hessfree.errors import ConfigError

def resolve(name: str):
    """A built-in experiment by name, or an experiment TOML file."""
    from hessfree.experiments.builtin import BUILTIN
    from hessfree.experiments.spec import Experiment

    if name in BUILTIN:
        return BUILTIN[name]
    if name.endswith(".toml") or Path(name).exists():
        return Experiment.from_toml(name)
    raise ConfigError(f"experiment: expected one of {', '.join(BUILTIN)} or a .toml file, found {name!r}")


@click.group("experiment")
def experiment_group() -> None:
    """Experiments that settle the paper's claims: run (resumable), then report."""


@experiment_group.command("list")
def list_command() -> None:
    """The built-in experiments."""
    from hessfree.experiments.builtin import BUILTIN

    for name, exp in BUILTIN.items():
        click.echo(f"{name}: {exp.description}")


@experiment_group.command("run", epilog="Exit codes: 0 ok, 1 runtime or data error, 2 usage or experiment-file error.")
@click.argument("name")
@click.option("--data-dir", help="Directory of the dataset's files (MNIST for fig1 and fig3).")
@click.option("--seeds", type=int, help="Number of reported seeds (fresh seeds beyond the declared ones).")
@click.option("--quick", is_flag=True, help="The experiment's quick form (stated in its notes).")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (default results/NAME or results/NAME-quick).")
@click.option("--report/--no-report", default=True, show_default=True, help="Write the report when done.")
def run_command(name, data_dir, seeds, quick, out, report) -> None:
    """Run NAME (fig1, fig2, fig3 or an experiment .toml file); finished runs are skipped."""
    with reported(interrupted="interrupted (finished runs are kept; run the same command to continue)"):
        from hessfree.experiments.report import write_report
        from hessfree.experiments.runner import Runner
        from hessfree.experiments.scaling import ScalingRunner
        from hessfree.experiments.spec import Kind

        exp = resolve(name)
        if quick:
            exp = exp.quick_form()
        if seeds is not None:
            if seeds < 1:
                raise ConfigError(f"--seeds: expected an integer ≥ 1, found {seeds}")
            exp = exp.with_seeds(seeds)
        out = Path(out or f"results/{exp.name}{'-quick' if quick else ''}")
        click.echo(f"{exp.name}{' (quick)' if quick else ''}: {exp.notes}")

        def progress(event) -> None:
            what = ", ".join(f"{k}={v}" for k, v in event.spec.settings.items()) or "defaults"
            state = "done before" if event.skipped else f"{event.seconds:.1f}s"
            click.echo(f"[{event.index}/{event.total}] {event.spec.phase} {event.spec.plan.name} {what} seed {event.spec.seed}: {state}")

        runner_class = ScalingRunner if exp.kind is Kind.SCALING else Runner
        runner = runner_class(exp, out, data_dir=data_dir, on_run=progress)
        runner.run_all()
        click.echo(f"summary: {out / 'summary.json'}")
        if report:
            for path in write_report(out):
                click.echo(f"wrote {path}")


@experiment_group.command("report")
@click.argument("directory", type=click.Path(file_okay=False))
def report_command(directory) -> None:
    """Write DIRECTORY/report.md and its figures from DIRECTORY/summary.json."""
    from hessfree.experiments.report import write_report

    with reported():
        for path in write_report(directory):
            click.echo(f"wrote {path}")
