"""``hessfree plot``: training curves of one or more metrics files (``hessfree train --metrics``).

Exit codes: 0 ok, 1 runtime or data error (a missing, unreadable or malformed metrics
file, runs without records or without overlap, matplotlib not installed, the figure
cannot be written), 2 usage error (unknown --y, --label count not matching the files,
an axis the runs do not record, e.g. --x sim_time_s of runs trained without
--simulate). Errors are one line ``error: ...`` on stderr. A missing METRICS file is a
data error (1), like an unreadable one: the command line itself is well formed.
"""

from __future__ import annotations


import click

from hessfree.cli.errors import ExitCode, fail, internal_error
from hessfree.errors import ConfigError, HessfreeError
from hessfree.plotting import GROUP_CHOICES, X_CHOICES, Y_CHOICES


EPILOG = (
    "Runs of one group (default: the method; with --label: the label) are drawn as the median "
    "curve with a min-max band; runs with identical x values (iterations; epochs of first-order "
    "methods) are combined step by step, others interpolated linearly in x, over the x range "
    "all of them cover. Exit codes: 0 ok, 1 runtime or data error (including a missing file), "
    "2 usage error."
)


def _quantities(values: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for value in values:
        for name in (p.strip() for p in value.split(",")):
            if not name:
                continue
            if name not in Y_CHOICES:
                raise ConfigError(f"--y: expected {', '.join(Y_CHOICES)}, found {name!r}")
            if name not in out:
                out.append(name)
    return out or ["train_error"]


@click.command("plot", epilog=EPILOG, context_settings=dict(help_option_names=["-h", "--help"]))
@click.argument("metrics", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--y", "ys", multiple=True, metavar="QUANTITY",
              help=f"{', '.join(Y_CHOICES)}: repeatable or comma-separated, one subplot each (default train_error).")
@click.option("--x", "x", type=click.Choice(X_CHOICES), default="epochs", show_default=True, help="The horizontal axis.")
@click.option("--group", type=click.Choice(GROUP_CHOICES),
              help="Combine runs of the same method, label or file (default: label if --label is given, else method).")
@click.option("--label", "labels", multiple=True, metavar="LABEL",
              help="A name for each METRICS file, in order (give one per file).")
@click.option("--log-y/--linear-y", default=True, show_default=True, help="Log scale for errors and loss (symmetric-log, linear near 0, when a curve reaches 0).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Figure file, .png (or .pdf, .svg) (default: the first METRICS file with .png).")
@click.option("--title", help="Figure title (default: the data and layers, if all runs share them).")
def plot_command(metrics, ys, x, group, labels, log_y, out, title) -> None:
    """Plot loss or error curves of METRICS files written by `hessfree train --metrics`."""
    from pathlib import Path

    from hessfree.plotting import differing_settings, group_runs, plot_runs, read_metrics

    out_path = Path(out) if out else Path(metrics[0]).with_suffix(".png")
    try:
        quantities = _quantities(ys)
        if labels and len(labels) != len(metrics):
            raise ConfigError(f"--label: give one per METRICS file ({len(metrics)}), found {len(labels)}")
        runs = [read_metrics(p, label=labels[i] if labels else None) for i, p in enumerate(metrics)]
        group = group or ("label" if labels else "method")
        groups = group_runs(runs, group)
        written = plot_runs(groups, out_path, y=quantities, x=x, log_y=log_y, title=title)
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    except HessfreeError as exc:
        fail(str(exc), ExitCode.RUNTIME)
    except OSError as exc:
        fail(f"{out_path}: cannot write the figure: {exc.strerror or exc}", ExitCode.RUNTIME)
    except Exception as exc:  # a bug, not a user error: still one line and a documented code
        internal_error(exc, debug=False)
    for name, members in groups.items():
        differing = differing_settings(members)
        if len(members) > 1 and differing:
            click.echo(f"warning: group {name!r} combines runs that differ in {', '.join(differing)}", err=True)
    click.echo(f"wrote {written}")
