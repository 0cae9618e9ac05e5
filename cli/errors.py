"""How every ``hessfree`` command ends: documented exit codes and one line on stderr.

Exit codes: 0 ok, 1 runtime or data error, 2 usage or configuration error, 3 training
diverged. A typed error (:class:`~hessfree.errors.HessfreeError`) carries its own code;
an I/O error names its file; anything else is a bug, reported as one ``internal error``
line (the traceback first with ``--debug``). A closed stdout (``| head``) ends quietly.
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


@contextlib.contextmanager
def reported(debug: bool = False, interrupted: str = "interrupted") -> Iterator[None]:
    """Run a command's body; turn whatever it raises into the documented ending."""
    try:
        yield
    except HessfreeError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail(interrupted, ExitCode.RUNTIME)
    except BrokenPipeError:
        reader_gone()
    except OSError as exc:
        fail(io_message(exc), ExitCode.RUNTIME)
    except Exception as exc:  # a bug, not a user error: still one line and a documented code
        internal_error(exc, debug)
