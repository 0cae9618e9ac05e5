"""``hessfree train``: parse into a RunConfig, run it through the library, render rank 0's records."""

from __future__ import annotations

import math
from typing import Callable

from hessfree.train.fit import Callback, FitResult, RunInfo, Status
from hessfree.train.run import run
from hessfree.train.runconfig import make_run_config

EXIT_OK, EXIT_DIVERGED = 0, 3


def format_record(record) -> str:
    test = "   -  " if record.test_error is None else f"{100 * record.test_error:5.2f}%"
    rho = "  -  " if record.rho is None or not math.isfinite(record.rho) else f"{record.rho:5.2f}"
    lam = "   -    " if not math.isfinite(record.damping) else f"{record.damping:8.2e}"
    return (
        f"{record.iteration:5d}  loss {record.loss:9.6f}  train {100 * record.train_error:5.2f}%  test {test}  "
        f"λ {lam}  ρ {rho}  cg {record.cg_iterations:3d}  α {record.step_size:6.3g}  "
        f"epochs {record.epochs:7.1f}  comm {record.comm_calls:6d}  {record.time_s:7.2f}s"
        + ("" if record.sim_time_s is None else f"  sim {record.sim_time_s:8.3f}s")
        + ("  neg-curv" if record.negative_curvature else "")
    )


class Progress(Callback):
    """The progress lines (rank 0 only, as every callback)."""

    def __init__(self, echo: Callable[..., None], quiet: bool, unit: str):
        self.echo, self.quiet, self.unit = echo, quiet, unit

    def on_start(self, info: RunInfo) -> None:
        for warning in info.warnings:
            self.echo(f"warning: {warning}", err=True)
        if info.resumed_from:
            self.echo(f"resumed from {info.resumed_from}")
        if not self.quiet:
            self.echo(
                f"hessfree: {info.method} on {info.data} ({info.n_train} train, {info.n_test} test), "
                f"layers {'-'.join(map(str, info.layers))}, {info.ranks} rank(s) ({info.backend})"
            )

    def on_iteration(self, record, state) -> None:
        if not self.quiet:
            self.echo(format_record(record))

    def on_end(self, result: FitResult) -> None:
        last = result.last
        if result.status is Status.DIVERGED:
            self.echo(f"error: {result.message}", err=True)
        elif last is not None:
            acc = "" if last.test_error is None else f", test accuracy {1 - last.test_error:.4f}"
            self.echo(f"done: {result.state.iteration} {self.unit}, loss {last.loss:.6f}, train accuracy {1 - last.train_error:.4f}{acc}, {last.time_s:.1f}s")
        else:
            self.echo(f"done: nothing to do (already at {result.state.iteration})")


def run_training(values: dict, echo: Callable[..., None]) -> int:
    """Run ``hessfree train`` with the merged settings; returns the exit code."""
    config = make_run_config(values)
    progress = Progress(echo, config.quiet, "iterations" if config.train.method.is_hessian_free else "epochs")

    def abort_job(comm, exc: BaseException) -> None:
        if comm.size > 1:  # one line from the failing rank, then end every rank at once
            code = getattr(exc, "exit_code", 1)
            echo(f"error: rank {comm.rank}: {exc}", err=True)
            comm.abort(code if isinstance(code, int) and code > 0 else 1)

    result = run(config, [progress], on_rank_error=abort_job)
    return EXIT_DIVERGED if result.status is Status.DIVERGED else EXIT_OK
