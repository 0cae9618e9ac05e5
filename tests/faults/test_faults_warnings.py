"""Fault suite, numerical warnings (cause 9 of issue 17): overflow never leaks a numpy
``RuntimeWarning`` and a line of library source; a failing run prints its one error
line and nothing else, a successful one sums each distinct warning up in one line."""

from __future__ import annotations

import warnings

import click
import pytest
from fault_helpers import invoke, one_error_line, run_cli
from hessfree.cli.errors import reported


@pytest.mark.parametrize("method", ["adam", "sgd"])
def test_an_overflowing_run_ends_with_its_one_error_line(method):
    # a subprocess: exactly what a user sees on stderr, warnings machinery included
    result = run_cli("train", "--method", method, "--epochs", "2", "--lr", "1e300", "--hidden", "10",
                     "--dtype", "float32", "--quiet", timeout=120)
    assert result.exit_code == 3
    line = one_error_line(result)
    assert "diverged" in line
    assert "RuntimeWarning" not in result.stderr and ".py:" not in result.stderr


def test_a_warning_in_a_successful_command_is_one_line(capsys):
    with reported():
        warnings.warn("overflow encountered in cast", RuntimeWarning)
        warnings.warn("overflow encountered in cast", RuntimeWarning)
        click.echo("done")
    captured = capsys.readouterr()
    assert captured.out == "done\n"
    assert captured.err == "warning: numerical: overflow encountered in cast\n"


def test_warnings_of_a_failing_command_are_dropped(capsys):
    with pytest.raises(SystemExit) as exit_, reported():
        warnings.warn("overflow encountered in multiply", RuntimeWarning)
        from hessfree.errors import DataError

        raise DataError("bad.npz: X: broken")
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: bad.npz: X: broken\n"


def test_a_run_that_diverges_in_process_prints_one_line():
    result = invoke("train", "--method", "adam", "--epochs", "2", "--lr", "1e300", "--hidden", "10",
                    "--dtype", "float32", "--quiet")
    assert result.exit_code == 3
    assert "diverged" in one_error_line(result)
