"""Fault suite, signals: a run interrupted (Ctrl-C) ends with one line and exit 1, a run
killed outright (SIGKILL, a power cut) loses nothing it had checkpointed: the next
``--resume`` continues from the newest good checkpoint, and the temporaries the killed
process left behind are removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from fault_helpers import F, invoke, manifests, one_error_line

#: a run long enough to be interrupted (wider than the probe's, so iterations take a while)
BASE = ["--method", "gn-cg", "--quiet", "--hidden", "200", "--batch-size", "1000"]


def _start(ck):
    return subprocess.Popen([sys.executable, "-m", "hessfree", "train", *BASE, "--iterations", "400", "--checkpoint-dir", str(ck)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoints(proc, ck, count: int = 2, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while len(manifests(ck)) < count:
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint written in time")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_or_killed_run_resumes_from_its_newest_checkpoint(tmp_path, sig):
    ck = tmp_path / "ck"
    proc = _start(ck)
    _wait_for_checkpoints(proc, ck)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 1
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines == ["error: interrupted"], err
    else:
        assert proc.returncode == -signal.SIGKILL
    # what a kill in the middle of a write leaves: a temporary of the dead process
    scope = manifests(ck)[-1].stem.split("-")[-1]
    stale = ck / f".state-99999999-{scope}.npz.{proc.pid}.zz9x.tmp"
    stale.write_bytes(b"half")
    done = len(manifests(ck))
    newest = int(manifests(ck)[-1].stem.split("-")[1])
    result = invoke("train", *BASE, "--iterations", newest + 1, "--checkpoint-dir", ck, "--resume")
    assert result.exit_code == 0, result.output
    assert f"resumed from iteration {newest}" in result.stdout
    assert not stale.exists() and done >= 2


def test_interrupting_a_run_prints_one_line_in_process(monkeypatch):
    import hessfree.cli.run as run_module

    def interrupted(values, echo):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run_training", interrupted)
    result = invoke("train", *F)
    assert result.exit_code == 1
    assert one_error_line(result) == "error: interrupted"


def test_no_temporary_is_left_by_a_write_that_raises(tmp_path):
    from hessfree.atomic import atomic_file

    with pytest.raises(RuntimeError), atomic_file(tmp_path / "x.bin") as fh:
        fh.write(b"half")
        raise RuntimeError("interrupted mid-write")
    assert list(tmp_path.iterdir()) == []
    assert os.listdir(tmp_path) == []
