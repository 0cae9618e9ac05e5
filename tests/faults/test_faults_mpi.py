"""Fault suite, MPI jobs (causes 10-11 of issue 17, killed and stalled ranks), really
launched with mpirun under a deadline (a hang fails the test).

One voice: an error every rank meets (options, config file, data, checkpoints, output
paths) is printed once, with the documented exit code, and without ``MPI_ABORT`` (Open
MPI's own "exited with non-zero status" notice cannot be suppressed and is allowed). A
backend that contradicts its launcher is refused. A rank failing, killed or stalled on
its own ends the whole job within seconds, with one line naming it."""

from __future__ import annotations

import numpy as np
import pytest
from fault_helpers import F, invoke
from launch import run_mpi

pytestmark = pytest.mark.mpi


def _errors(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith("error:")]


def _one_voice(run, code: int) -> str:
    assert run.returncode == code, run.output
    errors = _errors(run.output)
    assert len(errors) == 1, run.output
    assert "MPI_ABORT" not in run.output and "Traceback" not in run.output
    return errors[0]


def _train(*args, ranks: int = 2, limit: float = 120):
    return run_mpi(ranks, "train_cli.py", "train", *map(str, args), limit=limit)


def test_a_bad_npz_is_one_line_under_mpirun(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an archive")
    line = _one_voice(_train(*F, "--dataset", "npz", "--data-dir", bad), 1)
    assert "bad.npz" in line


def test_an_npz_with_an_absurd_label_is_one_line_under_mpirun(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 100)
    y[3] = 2**40
    np.savez(tmp_path / "big.npz", X=rng.standard_normal((100, 5)), y=y)
    line = _one_voice(_train(*F, "--dataset", "npz", "--data-dir", tmp_path / "big.npz"), 1)
    assert "big.npz" in line and "label" in line


def test_a_bad_option_and_a_bad_config_file_are_one_line_under_mpirun(tmp_path):
    assert "damping" in _one_voice(_train(*F, "--damping", "-1"), 2)
    cfg = tmp_path / "run.toml"
    cfg.write_text('quiet = "no"\n')
    assert "quiet" in _one_voice(_train(*F, "--config", cfg), 2)


def test_a_refused_resume_and_an_unwritable_output_are_one_line_under_mpirun(tmp_path):
    ck = tmp_path / "ck"
    assert invoke("train", *F, "--checkpoint-dir", ck).exit_code == 0
    line = _one_voice(_train(*F, "--checkpoint-dir", ck, "--resume", "--damping", "2"), 1)
    assert "different configuration" in line
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert str(blocker) in _one_voice(_train(*F, "--metrics", blocker / "m.jsonl"), 1)


def test_threads_under_mpirun_are_refused_not_run_three_times(tmp_path):
    metrics = tmp_path / "m.jsonl"
    line = _one_voice(_train(*F, "--comm", "threads", "--metrics", metrics, ranks=3), 2)
    assert "comm" in line and "mpirun" in line
    assert not metrics.exists()
    assert _one_voice(_train(*F, "--comm", "serial", ranks=2), 2)


def test_a_stalled_rank_ends_the_job_with_one_unrepeated_prefix():
    run = run_mpi(2, "train_fault.py", "stall", "1", "2", "train", *F[:-1], "50", "--comm-timeout", "3", limit=120)
    assert run.returncode != 0
    assert "timed out after 3 s" in run.output
    assert "rank 0: rank 0:" not in run.output and "rank 1: rank 1:" not in run.output
    assert run.seconds < 60


@pytest.mark.parametrize("mode", ["kill", "raise"])
def test_a_rank_killed_or_failing_alone_ends_the_job_within_seconds(mode):
    run = run_mpi(2, "train_fault.py", mode, "1", "2", "train", *F[:-1], "50", "--comm-timeout", "120", limit=120)
    assert run.returncode != 0
    assert run.seconds < 60  # not the 120 s deadline: the job is ended, nobody waits
    if mode == "raise":
        errors = _errors(run.output)
        assert len(errors) == 1 and errors[0].startswith("error: rank 1: ") and "injected failure" in errors[0]


def test_a_good_run_under_mpirun_still_works(tmp_path):
    run = _train(*F, "--metrics", tmp_path / "m.jsonl", "--checkpoint-dir", tmp_path / "ck")
    assert run.returncode == 0, run.output
    assert "done: 2 iterations" in run.output and not _errors(run.output)
    assert len(list((tmp_path / "ck").glob("state-*.json"))) == 2
