"""How every ``hessfree`` command ends: documented exit codes and one line on stderr.

Exit codes: 0 ok, 1 runtime or data error, 2 usage or configuration error, 3 training
diverged. A typed error (:class:`~hessfree.errors.HessfreeError`) carries its own code;
an I/O error names its file; anything else is a bug, reported as one ``internal error``
line (the traceback first with ``--debug``). A closed stdout (``| head``) ends quietly.

Under an MPI launcher one rank speaks for the job: an error every rank meets before any
communication (options, config files) is printed by rank 0 only, the others exit with
the same code silently; an error the ranks agreed on (``hessfree.train.fit.agree``:
data, checkpoints, output paths) is printed by the rank that reports it. Only an error
on one rank alone, in the middle of the work, aborts the job (``cli/run.py``).
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
import traceback
from typing import Iterator, NoReturn

import click

from hessfree.errors import HessfreeError


class ExitCode(enum.IntEnum):
    OK = 0
    RUNTIME = 1
    USAGE = 2
    DIVERGED = 3


EPILOG = "Exit codes: 0 ok, 1 runtime or data error, 2 usage or configuration error, 3 training diverged."


def fail(message: str, code: int) -> NoReturn:
    """``error: message`` (one line) on stderr, then exit with ``code``."""
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(int(code))


def reader_gone() -> NoReturn:
    """stdout's reader went away (``hessfree train | head``): stop quietly, as Unix tools do."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    sys.exit(ExitCode.RUNTIME)


def internal_error(exc: BaseException, debug: bool) -> NoReturn:
    """A bug, not a user error: one line and exit 1; with ``--debug`` the traceback first."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
        sys.stderr.flush()
    hint = "" if debug else " (run again with --debug for the traceback)"
    fail(f"internal error: {type(exc).__name__}: {exc}{hint}", ExitCode.RUNTIME)


def io_message(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    return f"{exc.filename}: {what}" if exc.filename else what


def _mpi_initialized() -> bool:
    mpi = sys.modules.get("mpi4py.MPI")
    try:
        return bool(mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized())
    except Exception:  # pragma: no cover - a broken MPI: assume it is running
        return True


def quiet_rank(exc: BaseException) -> bool:
    """Whether this process stays silent about ``exc`` because another rank reports it:
    an agreed error reported by another rank, or, before MPI started, any error on a
    rank other than 0 of an MPI launch (every rank meets it: the same options and files)."""
    job = getattr(exc, "hessfree_job", None)
    if job is not None:
        return job.rank != job.reporter
    from hessfree.comm.factory import launcher_rank

    rank = launcher_rank()
    return rank is not None and rank != 0 and not _mpi_initialized()


def lead_process() -> bool:
    """Whether this process prints for the job: not started by an MPI launcher, or its rank 0."""
    from hessfree.comm.factory import launcher_rank

    return launcher_rank() in (None, 0)


def with_rank(exc: BaseException, message: str) -> str:
    """``message``, prefixed with the reporting rank when it is not rank 0 of a job."""
    job = getattr(exc, "hessfree_job", None)
    if job is not None and job.reporter != 0 and not message.startswith(f"rank {job.reporter}:"):
        return f"rank {job.reporter}: {message}"
    return message


#: how long a silent rank waits before exiting with the error code: mpirun ends the whole
#: job when the first process exits non-zero, which could cut off the reporting rank's line
QUIET_RANK_GRACE_S = 3.0


def _end(exc: BaseException, message: str, code: int) -> NoReturn:
    if quiet_rank(exc):
        import time

        job = getattr(exc, "hessfree_job", None)
        time.sleep(QUIET_RANK_GRACE_S)
        sys.exit(int(job.code if job is not None else code))
    fail(with_rank(exc, message), code)


@contextlib.contextmanager
def reported(debug: bool = False, interrupted: str = "interrupted") -> Iterator[list]:
    """Run a command's body; turn whatever it raises into the documented ending. Yields
    the list of captured warnings (see :func:`captured_warnings`)."""
    try:
        with captured_warnings() as caught:
            yield caught
    except HessfreeError as exc:
        _end(exc, str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail(interrupted, ExitCode.RUNTIME)
    except BrokenPipeError:
        reader_gone()
    except OSError as exc:
        _end(exc, io_message(exc), ExitCode.RUNTIME)
    except Exception as exc:  # a bug, not a user error: still one line and a documented code
        if quiet_rank(exc):
            _end(exc, "", ExitCode.RUNTIME)
        internal_error(exc, debug)


@contextlib.contextmanager
def captured_warnings() -> Iterator[list]:
    """Warnings are captured instead of printed with a line of library source (numpy's
    ``RuntimeWarning`` on overflow, say): when the command then fails, its one error line
    says what happened and the warnings are dropped; when it succeeds, each distinct
    warning is one ``warning:`` line on stderr. The caller may empty the yielded list
    (a run that ends with a non-zero code it returns rather than raises)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # each distinct warning once: bounded memory
        yield caught
    seen = []
    for w in caught:
        text = f"{' '.join(str(w.message).split())}"
        if issubclass(w.category, RuntimeWarning):
            text = f"numerical: {text}"
        if text not in seen:
            seen.append(text)
    if seen and lead_process():
        for text in seen:
            click.echo(f"warning: {text}", err=True)
