"""``hessfree train``: parse into a RunConfig, run it through the library, render rank 0's records.

The progress output (rank 0 only), at default verbosity at most ~100 characters a line:

    gn-cg on digits: 1,347 training samples, 450 test samples
    layers 64-16-10 (1,210 parameters), 1 rank (serial)
    err: % wrong · λ: damping · ρ: actual/predicted drop · cg: Krylov steps · passes: effective epochs
    iter       loss  train err  test err        λ      ρ    cg  passes  s/iter  elapsed     ETA
     1/3   2.173622     79.06%    79.11%  1.0e+00   0.99    12     4.9   0.04s     0.0s    0.1s

First-order methods print one line per epoch (``epoch`` k/N). ``-v`` adds columns (step
size, curvature, stop reason, collectives, MB sent); ``--quiet`` prints only the final
line. Output is plain text, one line per iteration, on a terminal as in a pipe or a log.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

import attrs

from hessfree.cli.errors import ExitCode
from hessfree.train.fit import Callback, FitResult, RunInfo, Status, job_of
from hessfree.train.run import run
from hessfree.train.runconfig import make_run_config

#: a warm-up still running after this many seconds is compiling (a cached load takes < 1 s)
COMPILE_NOTICE_AFTER = 2.0
BACKEND_NAMES = {"SerialComm": "serial", "ThreadComm": "threads", "MPIComm": "mpi"}


# ---------------------------------------------------------------------------- cell formats
def duration(seconds: float | None) -> str:
    """``12.3s``, ``4m05s``, ``2h03m``, ``1.2e+09s`` beyond 9999 hours (``-`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds >= 9999 * 3600:
        return f"{seconds:.1e}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m}m{s:02d}s"
    h, m = divmod(int(round(seconds)) // 60, 60)
    return f"{h}h{m:02d}m"


def _per_step(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    return f"{seconds:.2f}s" if seconds < 100 else duration(seconds)


def _loss(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.6f}" if abs(x) < 1000 else f"{x:.3e}"


def _objective(record) -> str:
    """The training objective, or ~ and the gradient sample's when the iteration ran on a
    sample (``--gradient-sample``: the training set's was not evaluated)."""
    sample = getattr(record, "sample_loss", math.nan)
    if not math.isfinite(record.loss) and sample is not None and math.isfinite(sample):
        return "~" + _loss(sample)
    return _loss(record.loss)


def _fixed(x: float) -> str:
    """x to four decimals, or "-" when it was not evaluated (NaN: a gradient sample's iteration)."""
    return f"{x:.4f}" if math.isfinite(x) else "-"


def _percent(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}%"


def _sci(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.1e}"


def _ratio(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.2f}" if abs(x) < 100 else f"{x:.0e}"


def _number(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:g}"


@attrs.frozen
class Column:
    header: str
    width: int
    cell: Callable  # (Row) -> str
    level: int = 0  # shown from this verbosity on
    left: bool = False


@attrs.frozen
class Row:
    """What one progress line shows: the record plus this session's clock."""

    record: object  # IterationRecord
    k: int  # iterations (HF) or epochs done
    total: int
    step_s: float  # wall seconds of this iteration (or epoch)
    elapsed_s: float  # wall seconds since this session's training started
    eta_s: float | None


def columns(hessian_free: bool, evaluation: str, solver: str, total: int, simulate: bool, reconstruct: bool = False) -> list[Column]:
    """The progress table's columns for a method family (see the module docstring)."""
    unit = "iter" if hessian_free else "epoch"
    kind = "rec" if reconstruct else "err"
    eval_header = {"validation": f"val {kind}", "none": f"test {kind}"}.get(evaluation, f"test {kind}")
    error = (lambda x: "-" if x is None else _loss(x)) if reconstruct else _percent
    count_width = max(len(unit), 2 * len(str(total)) + 1)
    cols = [
        Column(unit, count_width, lambda r: f"{r.k}/{r.total}"),
        Column("loss", 9, lambda r: _objective(r.record)),
        Column(f"train {kind}", 9, lambda r: error(r.record.train_error)),
        Column(eval_header, 8, lambda r: error(r.record.test_error)),
    ]
    if hessian_free:
        cols += [
            Column("λ", 7, lambda r: _sci(r.record.damping)),
            Column("ρ", 5, lambda r: _ratio(r.record.rho)),
            Column(solver, 4, lambda r: str(r.record.cg_iterations)),
            Column("α", 6, lambda r: _number(r.record.step_size), level=1),
            Column("curvature", 12, lambda r: r.record.curvature or "-", level=1),
            Column("stop", 18, lambda r: r.record.stop_reason or "-", level=1),
            Column("neg", 3, lambda r: "yes" if r.record.negative_curvature else "", level=1),
        ]
    else:
        cols.append(Column("updates", 8, lambda r: str(r.record.iteration), level=1))
    cols += [
        Column("passes", 6, lambda r: f"{r.record.epochs:.1f}"),
        Column("s/" + unit, 6, lambda r: _per_step(r.step_s)),
        Column("elapsed", 7, lambda r: duration(r.elapsed_s)),
        Column("ETA", 6, lambda r: duration(r.eta_s)),
        Column("comm", 7, lambda r: str(r.record.comm_calls), level=1),
        Column("MB sent", 8, lambda r: f"{r.record.comm_bytes / 1e6:.2f}", level=1),
    ]
    if simulate:
        cols.append(Column("sim", 7, lambda r: "-" if r.record.sim_time_s is None else duration(r.record.sim_time_s)))
    return cols


def render(cols: list[Column], cells: list[str]) -> str:
    return "  ".join(c.ljust(col.width) if col.left else c.rjust(col.width) for col, c in zip(cols, cells)).rstrip()


def legend(hessian_free: bool, solver: str, sampled: bool = False) -> str:
    """One line naming what the columns' symbols mean (at most ~100 characters; a run on a
    gradient sample says what its ``~`` means instead of the Krylov column's name)."""
    if hessian_free:
        middle = "~: sample's loss" if sampled else f"{solver}: Krylov steps"
        return f"err: % wrong · λ: damping · ρ: actual/predicted drop · {middle} · passes: effective epochs"
    return "err: % wrong · passes: effective epochs (samples through the network / training samples)"


def format_record(record, k: int | None = None, total: int | None = None) -> str:
    """One record as a plain line with labelled fields (for logs and the API's users)."""
    head = f"{record.iteration:5d}" if k is None else f"{k}/{total}"
    return (
        f"{head}  loss {_loss(record.loss)}  train err {_percent(record.train_error)}  "
        f"test err {_percent(record.test_error)}  λ {_sci(record.damping)}  ρ {_ratio(record.rho)}  "
        f"cg {record.cg_iterations}  passes {record.epochs:.1f}  {record.time_s:.2f}s"
        + ("" if record.sim_time_s is None else f"  sim {record.sim_time_s:.3f}s")
    )


def _thousands(n: int) -> str:
    return f"{n:,}"


class Progress(Callback):
    """The progress lines (rank 0 only, as every callback)."""

    def __init__(self, echo: Callable[..., None], quiet: bool, unit: str, *, verbose: int = 0, solver: str = "cg",
                 simulate: bool = False, save_model: str | None = None, compile_notice_after: float = COMPILE_NOTICE_AFTER,
                 clock: Callable[[], float] = time.monotonic, sampled: bool = False):
        self.echo, self.quiet, self.unit, self.verbose, self.sampled = echo, quiet, unit, verbose, sampled
        self.solver, self.simulate, self.clock, self.save_model = solver, simulate, clock, save_model
        self.compile_notice_after = compile_notice_after
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._warming = False
        self._noticed = False
        self.cols: list[Column] = []

    # ------------------------------------------------------------------ warm-up
    def on_warmup_start(self) -> None:
        if self.quiet:
            return
        self._warming = True
        if self.compile_notice_after <= 0:
            self._notice()
            return
        self._timer = threading.Timer(self.compile_notice_after, self._notice)
        self._timer.daemon = True
        self._timer.start()

    def _notice(self) -> None:
        with self._lock:
            if self._warming and not self._noticed:
                self._noticed = True
                self.echo("compiling kernels (first run only)…")

    def on_warmup_end(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._warming = False
            noticed = self._noticed
        if noticed:
            self.echo(f"kernels compiled in {duration(seconds)} (cached for later runs)")
        elif self.verbose and not self.quiet:
            self.echo(f"kernels ready in {duration(seconds)}")

    # ------------------------------------------------------------------ training
    def on_start(self, info: RunInfo) -> None:
        for warning in info.warnings:
            self.echo(f"warning: {warning}", err=True)
        if info.resumed_from:
            self.echo(f"resumed from {info.resumed_from}")
        if info.resume_note:
            self.echo(f"note: {info.resume_note}")
        hf = self.unit == "iterations"
        self.info, self.start, self.steps, self.last = info, self.clock(), [], self.clock()
        self.cols = [c for c in columns(hf, info.evaluation, self.solver, info.total, self.simulate, info.reconstruct) if c.level <= self.verbose]
        if self.quiet:
            return
        backend = BACKEND_NAMES.get(info.backend, info.backend)
        eval_name = {"validation": "validation", "none": "test"}.get(info.evaluation, "test")
        self.echo(f"{info.method} on {info.data}: {_thousands(info.n_train)} training samples, "
                  f"{_thousands(info.n_test)} {eval_name} samples")
        layout = ", model-parallel" if info.parallel == "model" else ""
        self.echo(f"layers {'-'.join(map(str, info.layers))} ({_thousands(info.n_params)} parameters), "
                  f"{info.ranks} rank{'s' if info.ranks != 1 else ''} ({backend}{layout})")
        if info.start >= info.total:
            return
        text = legend(hf, self.solver, self.sampled)
        if info.reconstruct:
            text = text.replace("err: % wrong", "rec: squared reconstruction error per sample")
        self.echo(text)
        self.echo(render(self.cols, [c.header for c in self.cols]))

    def on_iteration(self, record, state) -> None:
        now = self.clock()
        step, self.last = now - self.last, now
        self.steps.append(step)
        if self.quiet:
            return
        k, total = state.iteration, self.info.total
        mean = sum(self.steps) / len(self.steps)
        row = Row(record=record, k=k, total=total, step_s=step, elapsed_s=now - self.start, eta_s=mean * max(0, total - k))
        self.echo(render(self.cols, [c.cell(row) for c in self.cols]))

    def on_end(self, result: FitResult) -> None:
        last = result.last
        if result.status is Status.DIVERGED:
            self.echo(f"error: {result.message}", err=True)
        elif last is not None:
            info = getattr(self, "info", None)
            split = "validation" if info is not None and info.evaluation == "validation" else "test"
            if info is not None and info.reconstruct:
                other = "" if last.test_error is None else f", {split} reconstruction error {last.test_error:.4f}"
                self.echo(f"done: {result.state.iteration} {self.unit}, loss {_objective(last)}, train reconstruction error {_fixed(last.train_error)}{other}, {last.time_s:.1f}s")
            else:
                acc = "" if last.test_error is None else f", {split} accuracy {_fixed(1 - last.test_error)}"
                self.echo(f"done: {result.state.iteration} {self.unit}, loss {_objective(last)}, train accuracy {_fixed(1 - last.train_error)}{acc}, {last.time_s:.1f}s")
        else:
            self.echo(f"done: nothing to do (already at {result.state.iteration})")
        if result.status is Status.DIVERGED and self.save_model:
            self.echo(f"warning: model not saved to {self.save_model}: training diverged", err=True)
        if result.saved_model:
            self.echo(f"model saved to {result.saved_model} (try: hessfree evaluate --model {result.saved_model} ...)")


def rank_message(rank: int, exc: BaseException) -> str:
    """``rank R: message`` (once: messages of communicator errors already start so)."""
    from hessfree.cli.errors import io_message

    text = io_message(exc) if isinstance(exc, OSError) else str(exc)
    text = " ".join(text.split()) or ("interrupted" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__)
    return text if text.startswith(f"rank {rank}:") else f"rank {rank}: {text}"


def run_training(values: dict, echo: Callable[..., None]) -> int:
    """Run ``hessfree train`` with the merged settings; returns the exit code."""
    config = make_run_config(values)
    method = config.train.method
    solver = "bicg" if method.spec.solver is not None and method.spec.solver.__name__.lower().startswith("bicg") else "cg"
    progress = Progress(
        echo, config.quiet, "iterations" if method.is_hessian_free else "epochs",
        verbose=config.verbose, solver=solver, simulate=config.simulate is not None, save_model=config.save_model,
        sampled=method.is_hessian_free and (config.train.sample_start > 0 or config.train.window_size > 0),
    )

    def abort_job(comm, exc: BaseException) -> None:
        if comm.size <= 1:
            return
        if job_of(exc) is not None:
            # every rank knows (``agree``) and stops here: the reporting rank prints it,
            # the others exit with its code; MPI ends cleanly, so no abort banner
            finalize = getattr(comm, "finalize", None)
            if finalize is not None:
                finalize()
            return
        # an error on this rank alone: one line from it, then end every rank at once
        code = getattr(exc, "exit_code", 1)
        echo(f"error: {rank_message(comm.rank, exc)}", err=True)
        comm.abort(code if isinstance(code, int) and code > 0 else 1)

    result = run(config, [progress], on_rank_error=abort_job)
    return ExitCode.DIVERGED if result.status is Status.DIVERGED else ExitCode.OK
