"""``hessfree cost``: what-if tables of time, speed-up and communication; ``cost calibrate``.

Exit codes: 0 ok, 1 runtime error (e.g. no MPI for calibration, unreadable calibration),
2 bad options (non-finite or negative numbers, unknown names). Errors are one line
``error: ...`` on stderr.
"""

from __future__ import annotations

import json
import math

import click

from functools import partial

from hessfree.cost.layouts import layout_table
from hessfree.cost.model import Blocks, CostMethod
from hessfree.cost.network import Collective
from hessfree.cost.presets import INTERCONNECTS
from hessfree.cli.errors import ExitCode, fail, reported
from hessfree.errors import ConfigError
from hessfree.validate import choices


#: keys every --json row carries (a stable schema; more keys may follow)
JSON_KEYS = (
    "method", "batch", "nodes", "time_per_iteration_s", "speedup", "efficiency",
    "collectives_per_iteration", "bytes_per_iteration", "time_gradient_s", "time_solve_s",
    "time_line_search_s", "time_other_s", "compute_s", "communication_s", "time_per_epoch_s",
    "collectives_per_epoch", "bytes_per_epoch", "epochs_per_iteration",
)


def _ints(name: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise ConfigError(f"--{name}: expected comma-separated positive integers, found {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"--{name}: expected comma-separated positive integers, found {text!r}")
    return values


def _number(name: str, value: float | None, *, positive: bool) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"--{name}: expected a finite number {'> 0' if positive else '≥ 0'}, found {value!r}")
    return value


def _build_model(o: dict):
    """The CostModel the options describe (preset, node, network, overrides)."""
    import attrs

    from hessfree.cost import Blocks, Calibration, CostModel, default_path, interconnect, network_preset, paper_node
    from hessfree.cost.network import Network

    layers = _ints("layers", o["layers"])
    preset = network_preset(o["preset"]) if o["preset"] else None
    if layers is None:
        layers = list(preset.layers) if preset else [784, 400, 10]
    samples = o["samples"] if o["samples"] is not None else (preset.samples if preset else 60_000)
    test = o["test_samples"] if o["test_samples"] is not None else (preset.test_samples if preset else 0)
    if samples < 1 or test < 0:
        raise ConfigError("--samples must be ≥ 1 and --test-samples ≥ 0")
    itemsize = 4 if o["dtype"] == "float32" else 8 if o["dtype"] == "float64" else (preset.itemsize if preset else 8)
    calib_path = o["calibration"] or default_path()
    node_kind = o["node"]
    if node_kind is None:
        from pathlib import Path

        node_kind = "calibrated" if (not preset and Path(calib_path).exists()) else "paper"
    network = interconnect(o["interconnect"] or "omni-path")
    blocks = Blocks.BATCH
    if node_kind == "calibrated":
        calib = Calibration.load(calib_path)
        node = attrs.evolve(calib.node, itemsize=itemsize)
        if calib.network is not None and not o["interconnect"]:
            network = calib.network
        blocks = Blocks.CHUNK
    else:
        node = paper_node(itemsize)
    if o["blocks"]:
        blocks = Blocks(o["blocks"])
    flops = _number("flops", o["flops"], positive=True)
    latency = _number("latency", o["latency"], positive=False)
    bandwidth = _number("bandwidth", o["bandwidth"], positive=True)
    if flops is not None:
        node = attrs.evolve(node, flops=flops)
    if latency is not None or bandwidth is not None:
        network = Network(
            latency=network.latency if latency is None else latency,
            inverse_bandwidth=network.inverse_bandwidth if bandwidth is None else 1.0 / bandwidth,
        )
    return CostModel(layers=layers, samples=samples, test_samples=test, node=node, network=network,
                     collective=o["collective"], blocks=blocks), node_kind


def _render(columns, rows) -> list[str]:
    """A header, a rule and one line per row; ``columns`` are (header, width, cell) with
    ``cell(row) -> str``; the first column is left-aligned, the others right-aligned."""
    def line(cells):
        return " ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, (_, w, _)) in enumerate(zip(cells, columns))).rstrip()

    head = line([h for h, _, _ in columns])
    return [head, "-" * len(head)] + [line([cell(r) for _, _, cell in columns]) for r in rows]


#: the columns every table starts with
_KEY = [("method", 9, lambda r: r.method), ("batch", 6, lambda r: f"{r.batch:d}"), ("nodes", 5, lambda r: f"{r.nodes:d}")]


def _layouts_lines(rows) -> list[str]:
    """The --layouts table: one line per layout, ``*`` on the cheapest per (method, batch, nodes)."""
    return _render(_KEY + [
        ("layout", 6, lambda r: r.layout), ("data×model", 10, lambda r: f"{r.data_groups}×{r.model_slices}"),
        ("s/iter", 9, lambda r: f"{r.time_per_iteration_s:.4g}"), ("speedup", 7, lambda r: f"{r.speedup:.2f}"),
        ("compute s", 9, lambda r: f"{r.compute_s:.3g}"), ("comm s", 9, lambda r: f"{r.communication_s:.3g}"),
        ("coll/it", 7, lambda r: f"{r.collectives_per_iteration:d}"), ("MB/it", 8, lambda r: f"{r.bytes_per_iteration / 1e6:.3g}"),
        ("best", 4, lambda r: "*" if r.best else ""),
    ], rows)


def _table(rows) -> list[str]:
    return _render(_KEY + [
        ("s/iter", 9, lambda r: f"{r.time_per_iteration_s:.4g}"), ("speedup", 7, lambda r: f"{r.speedup:.2f}"),
        ("eff", 5, lambda r: f"{r.efficiency:.2f}"), ("grad s", 8, lambda r: f"{r.time_gradient_s:.3g}"),
        ("solve s", 8, lambda r: f"{r.time_solve_s:.3g}"), ("ls s", 8, lambda r: f"{r.time_line_search_s:.3g}"),
        ("s/epoch", 9, lambda r: f"{r.time_per_epoch_s:.4g}"), ("coll/it", 7, lambda r: f"{r.collectives_per_iteration:d}"),
        ("MB/it", 8, lambda r: f"{r.bytes_per_iteration / 1e6:.3g}"), ("coll/ep", 9, lambda r: f"{r.collectives_per_epoch:.4g}"),
        ("MB/ep", 9, lambda r: f"{r.bytes_per_epoch / 1e6:.4g}"),
    ], rows)


def plot_speedup(rows, path: str, title: str = "") -> None:
    """Speed-up against nodes per (method, batch), the ideal line, and the solve's share."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'hessfree[plot]'") from None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    series: dict = {}
    for r in rows:
        series.setdefault((r.method, r.batch), []).append(r)
    top = max(r.nodes for r in rows)
    ax1.plot([1, top], [1, top], "k--", lw=0.8, label="linear")
    for (method, batch), rs in series.items():
        nodes = [r.nodes for r in rs]
        ax1.plot(nodes, [r.speedup for r in rs], "o-", label=f"{method} b={batch}")
        ax2.plot(nodes, [100 * r.solve_share for r in rs], "o-", label=f"{method} b={batch}")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("nodes")
        ax.grid(alpha=0.3)
    ax1.set_yscale("log", base=2)
    ax1.set_ylabel("speed-up of one iteration")
    ax2.set_ylabel("solve share of iteration time (%)")
    ax1.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@click.group("cost", invoke_without_command=True, context_settings=dict(help_option_names=["-h", "--help"]))
@click.option("--preset", help="Network and data: mnist, mnist-deep, timit (paper sizes).")
@click.option("--layers", help="Layer widths, e.g. 360,512,512,512,1973.")
@click.option("--samples", type=int, help="Training samples n.")
@click.option("--test-samples", type=int, help="Test samples (one evaluation per iteration / epoch).")
@click.option("--batch", default="1024,4096,16384", show_default=True, help="Batch sizes (HF curvature batch, SGD mini-batch).")
@click.option("--nodes", default="1,2,4,8,16,32,64", show_default=True, help="Node counts P.")
@click.option("--method", default="sgd,bicgstab", show_default=True, help=f"Comma-separated: {', '.join(choices(CostMethod))} (sgd-mp: model-parallel SGD).")
@click.option("--cg-iters", type=int, default=10, show_default=True, help="Krylov iterations K per HF iteration.")
@click.option("--ls-trials", type=int, default=3, show_default=True, help="Objective evaluations L per HF iteration.")
@click.option("--node", type=click.Choice(["paper", "calibrated"]), help="Node speed: the paper's, or this machine's calibration (default: calibrated if a calibration exists and no preset is given).")
@click.option("--calibration", type=click.Path(dir_okay=False), help="Calibration JSON (default ~/.cache/hessfree/calibration.json).")
@click.option("--interconnect", type=click.Choice(list(INTERCONNECTS)), help="Network preset (default omni-path, or the calibrated MPI).")
@click.option("--flops", type=float, help="Override: sustained FLOP/s per node.")
@click.option("--latency", type=float, help="Override: latency α in seconds.")
@click.option("--bandwidth", type=float, help="Override: bandwidth in bytes/s.")
@click.option("--collective", type=click.Choice(choices(Collective)), default="ring", show_default=True)
@click.option("--blocks", type=click.Choice(choices(Blocks)), help="Full-data passes in 8192-row chunks (hessfree) or in b/P-row blocks (paper; default for --node paper).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), help="Value size (default: preset's, else float64).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of rows instead of the table.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a speed-up figure (PNG) like the paper's Figure 2.")
@click.option("--layouts", is_flag=True, help="What-if: every split of the nodes into data groups × model slices (data, model, 2-D), the cheapest per iteration marked.")
@click.pass_context
def cost_group(ctx, **o) -> None:
    """Predict time per iteration and epoch, speed-up and communication of SGD and HF."""
    if ctx.invoked_subcommand is not None:
        return
    with reported():
        batches = _ints("batch", o["batch"])
        nodes = _ints("nodes", o["nodes"])
        methods = [m for m in o["method"].replace(" ", "").split(",") if m]
        if o["cg_iters"] < 0 or o["ls_trials"] < 0:
            raise ConfigError("--cg-iters and --ls-trials must be ≥ 0")
        model, node_kind = _build_model(o)
        table = partial(layout_table, model) if o["layouts"] else model.table
        rows = table(methods, batches, nodes, krylov_iterations=o["cg_iters"], line_search_evals=o["ls_trials"])
    if o["as_json"]:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=1))
    else:
        net = model.network
        click.echo(
            f"layers {'-'.join(map(str, model.layers))} ({model.n_params:,} parameters), n = {model.samples:,}, "
            f"node {node_kind} {model.node.flops / 1e9:.4g} GFLOP/s, α = {net.latency * 1e6:.3g} µs, "
            f"{net.bandwidth / 1e9:.3g} GB/s, {model.collective.value} allreduce, K = {o['cg_iters']}, L = {o['ls_trials']}"
        )
        for line in (_layouts_lines if o["layouts"] else _table)(rows):
            click.echo(line)
    if o["plot"]:
        try:
            plot_speedup([r for r in rows if getattr(r, "best", True)], o["plot"], title=f"{'-'.join(map(str, model.layers))}, n = {model.samples:,}")
        except ConfigError as exc:  # e.g. no matplotlib: the table was printed, the figure not
            fail(str(exc), ExitCode.RUNTIME)
        except OSError as exc:
            fail(f"--plot {o['plot']}: {exc.strerror}", ExitCode.RUNTIME)


@cost_group.command("calibrate")
@click.option("--layers", default="784,400,10", show_default=True, help="The model whose kernels are timed.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float64", show_default=True)
@click.option("--rows", default="16,64,256,1024,4096", show_default=True, help="Row counts of the efficiency curve.")
@click.option("--blas-threads", type=int, help="BLAS threads while timing (default: all).")
@click.option("--mpi/--no-mpi", default=True, show_default=True, help="Measure α, β of the installed MPI with a 2-rank mpirun probe.")
@click.option("--out", type=click.Path(dir_okay=False), help="Where to save (default ~/.cache/hessfree/calibration.json).")
def calibrate_cmd(layers, dtype, rows, blas_threads, mpi, out) -> None:
    """Measure this machine's kernel FLOP rate and network α, β; save them as JSON."""
    from hessfree.cost import calibrate, default_path

    with reported():
        layer_list = _ints("layers", layers)
        row_list = _ints("rows", rows)
        if blas_threads is not None and blas_threads < 1:
            raise ConfigError(f"--blas-threads: expected an integer ≥ 1, found {blas_threads}")
        calib = calibrate(layer_list, dtype=dtype, rows=row_list, blas_threads=blas_threads, mpi=mpi)
        path = calib.save(out or default_path())
    click.echo(f"peak {calib.node.flops / 1e9:.3g} GFLOP/s ({'-'.join(map(str, layer_list))}, {dtype})")
    for name, net in (("MPI ping-pong", calib.network), ("MPI allreduce (effective)", calib.mpi_effective),
                      ("thread allreduce (effective)", calib.threads_effective)):
        if net is not None:
            click.echo(f"{name}: α = {net.latency * 1e6:.3g} µs, {net.bandwidth / 1e9:.3g} GB/s")
    click.echo(f"saved {path}")
