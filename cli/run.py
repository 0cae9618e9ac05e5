"""``hessfree train``: build the run on every rank, iterate, render rank 0's records."""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import attrs

from hessfree import checkpoint
from hessfree.blas import blas_threads, local_ranks, threads_per_rank
from hessfree.comm import make_comm, run_threads, warm_numba_cache
from hessfree.comm.factory import launched_by_mpi
from hessfree.errors import ConfigError, DivergedError
from hessfree.train.session import Backend, MetricsWriter, RunConfig, Session, make_run_config

EXIT_OK, EXIT_DIVERGED = 0, 3


def _format(record) -> str:
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


def _warm_kernels(session: Session) -> None:
    """Compile (or load from numba's cache) every kernel this run uses, on a tiny batch."""
    import numpy as np

    model = session.model
    theta = model.init_params(0)
    X = np.zeros((2, model.n_inputs), dtype=model.dtype)
    y = np.zeros(2, dtype=np.int64)
    model.loss_grad(theta, X, y)
    model.evaluate(theta, X, y)
    cache = model.forward(theta, X, y)
    cache.gv(theta)
    cache.hv(theta)


def _simulated(config: RunConfig, comm):
    """``comm`` wrapped in a simulated-cluster clock when ``--simulate`` is given."""
    network = config.simulated_network()
    if network is None:
        return comm
    from hessfree.cost import simulated_comm

    return simulated_comm(comm, network, config.sim_collective, compute_scale=config.sim_compute_scale)


def _rank_main(config: RunConfig, comm, echo: Callable[[str], None]) -> dict:
    """What every rank runs; only rank 0 echoes and writes files."""
    lead = comm.rank == 0
    comm = _simulated(config, comm)
    session = Session(config, comm)
    warm_numba_cache(comm, lambda: _warm_kernels(session))
    sim_zero = getattr(comm, "clock", None)  # the simulated clock starts after the JIT warm-up
    trainer = session.trainer
    total = config.train.epochs if not config.train.method.is_hessian_free else config.train.iterations
    trajectory, config_hash = config.trajectory(comm.size), config.trajectory_hash(comm.size)
    state = trainer.initial_state()
    if config.resume:
        loaded = checkpoint.load_latest(config.checkpoint_dir, trajectory, config_hash)
        if lead:
            for warning in loaded.warnings:
                echo(f"warning: {warning}", err=True)
        state = trainer.state_from_payload(loaded.arrays, loaded.scalars)
        if sim_zero is not None:
            sim_zero -= loaded.scalars.get("sim_time_s") or 0.0
        if lead:
            echo(f"resumed from iteration {state.iteration} in {config.checkpoint_dir}")
    writer = None
    if lead and config.metrics:
        writer = MetricsWriter(config.metrics, session.header(), append=config.resume)
    if lead and not config.quiet:
        echo(
            f"hessfree: {config.train.method.value} on {session.data.name} "
            f"({session.data.n_train_global} train, {session.data.n_test_global} test), "
            f"layers {'-'.join(map(str, session.model.layers))}, {comm.size} rank(s) ({type(comm).__name__})"
        )
    last = None
    status, message = "ok", ""
    try:
        for state, record in trainer.run(state, total):
            if sim_zero is not None:
                record = attrs.evolve(record, sim_time_s=comm.clock - sim_zero)
            last = record
            if writer:
                writer.record(record)
            if lead and not config.quiet:
                echo(_format(record))
            if config.checkpoint_dir and (state.iteration % config.checkpoint_every == 0 or state.iteration == total):
                arrays, scalars = trainer.state_payload(state)
                scalars["sim_time_s"] = record.sim_time_s
                if lead:
                    checkpoint.save(config.checkpoint_dir, state.iteration, arrays, scalars, trajectory, config_hash)
                comm.barrier()  # no rank runs ahead of a checkpoint being written
    except DivergedError as exc:
        status, message = "diverged", str(exc)
    result = dict(status=status, message=message, iterations=state.iteration)
    if last is not None:
        result.update(sim_time_s=last.sim_time_s, loss=last.loss, train_error=last.train_error, test_error=last.test_error, time_s=last.time_s,
                      epochs=last.epochs, comm_calls=last.comm_calls, comm_bytes=last.comm_bytes)
    if writer:
        writer.close(result)
    if lead:
        if status == "diverged":
            echo(f"error: {message}", err=True)
        elif last is not None:
            acc = "" if last.test_error is None else f", test accuracy {1 - last.test_error:.4f}"
            unit = "iterations" if config.train.method.is_hessian_free else "epochs"
            echo(f"done: {state.iteration} {unit}, loss {last.loss:.6f}, train accuracy {1 - last.train_error:.4f}{acc}, {last.time_s:.1f}s")
        else:
            echo(f"done: nothing to do (already at iteration {state.iteration} of {total})")
    return result


def run_training(values: dict, echo: Callable[..., None]) -> int:
    """Run ``hessfree train`` with the merged settings; returns the exit code."""
    config = make_run_config(values)
    backend = config.comm
    if backend is Backend.AUTO:
        backend = Backend.MPI if launched_by_mpi() else (Backend.THREADS if config.ranks > 1 else Backend.SERIAL)
    if backend is not Backend.THREADS and config.ranks != 1:
        raise ConfigError(f"ranks: only --comm threads takes --ranks (found {config.ranks} with {backend.value}); under MPI use mpirun -n")
    if backend is Backend.THREADS:
        results = run_threads(lambda comm: _rank_main(config, comm, echo), config.ranks, timeout=config.comm_timeout)
        result = results[0]
    else:
        comm = make_comm(backend.value, timeout=config.comm_timeout)
        lead_echo = echo if comm.rank == 0 else (lambda *a, **k: None)
        # one process per MPI rank: share this node's cores among the ranks on it (a serial
        # run keeps the BLAS settings it was started with)
        limit = blas_threads(threads_per_rank(local_ranks())) if backend is Backend.MPI else contextlib.nullcontext()
        try:
            with limit:
                result = _rank_main(config, comm, lead_echo)
        except BaseException as exc:
            if comm.size > 1:  # one line from the failing rank, then end every rank at once
                code = getattr(exc, "exit_code", 1)
                echo(f"error: rank {comm.rank}: {exc}", err=True)
                comm.abort(code if isinstance(code, int) and code > 0 else 1)
            raise  # a single rank: the CLI prints the line and exits with the code
    return EXIT_DIVERGED if result["status"] == "diverged" else EXIT_OK
