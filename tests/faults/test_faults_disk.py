"""Fault suite, full disks and unwritable outputs (cause 8 of issue 17 and the output
checks): a write that fails (ENOSPC) is one line naming the file (exit 1), leaves no
temporary behind and no half-written checkpoint; an output path that cannot be written
is found before any work starts."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import LOUD, F, invoke, manifests, one_error_line

from hessfree import atomic
from hessfree.modelfile import ModelFileError, save_model
from hessfree.models import MLP


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_an_atomic_write_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    monkeypatch.setattr(atomic.os, "fsync", _no_space)
    with pytest.raises(OSError) as caught:
        atomic.atomic_write(target, b"data")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary


def test_a_full_disk_while_checkpointing_is_one_line_naming_the_checkpoint(tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    monkeypatch.setattr(atomic.os, "fsync", _no_space)
    result = invoke("train", *F, "--checkpoint-dir", ck)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert str(ck) in line and "state-00000001-" in line and "No space left on device" in line
    assert manifests(ck) == [] and [p for p in ck.iterdir() if p.suffix == ".tmp"] == []


def test_a_full_disk_while_writing_metrics_names_the_file(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    result = invoke("train", *F, "--metrics", "/dev/full")
    assert result.exit_code == 1
    assert one_error_line(result) == "error: /dev/full: No space left on device"


def test_a_full_disk_while_saving_the_model_names_the_file(tmp_path, monkeypatch):
    model = MLP([4, 3, 2])
    monkeypatch.setattr(atomic.os, "fsync", _no_space)
    with pytest.raises(ModelFileError, match=r"m\.hfm: cannot write the model file \(No space left on device\)"):
        save_model(tmp_path / "m.hfm", model, model.init_params(0))
    assert list(tmp_path.iterdir()) == []
    result = invoke("train", *F, "--save-model", tmp_path / "m.hfm")
    assert result.exit_code == 1
    assert "m.hfm" in one_error_line(result)


@pytest.mark.parametrize(
    "option, name",
    [("--checkpoint-dir", "ck"), ("--metrics", "m.jsonl"), ("--save-model", "m.hfm")],
)
def test_an_unwritable_output_is_found_before_any_work(tmp_path, option, name):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = blocker / name  # its parent is a file: nothing can be created there
    result = invoke("train", *LOUD, "--iterations", "3", option, path)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert str(path) in line or str(blocker) in line
    assert "iter" not in result.stdout and "1/3" not in result.stdout  # no iteration ran


def test_an_output_of_the_wrong_kind_is_refused_naming_it(tmp_path):
    with pytest.raises(IsADirectoryError) as caught:
        atomic.check_writable(tmp_path, "the metrics file")
    assert caught.value.filename == str(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError) as caught:
        atomic.check_writable(tmp_path / "f", "checkpoints", directory=True)
    assert caught.value.filename == str(tmp_path / "f")


def test_a_writable_output_is_not_created_by_the_check(tmp_path):
    atomic.check_writable(tmp_path / "new" / "deeper" / "m.jsonl", "the metrics file")
    atomic.check_writable(tmp_path / "ck", "checkpoints", directory=True)
    assert list(tmp_path.iterdir()) == []


def test_a_read_of_a_device_is_refused(tmp_path):
    with pytest.raises(atomic.NotRegularFile):
        atomic.read_regular("/dev/zero", 1 << 20)
    big = tmp_path / "big"
    big.write_bytes(np.zeros(1000, dtype=np.uint8).tobytes())
    with pytest.raises(atomic.TooLarge):
        atomic.read_regular(big, 999)
    assert atomic.read_regular(big, 1000) == bytes(1000)


@pytest.mark.parametrize("case, reason", [("missing", "not found"), ("directory", "is a directory"),
                                          ("device", "is not a regular file"), ("big", "is larger than the 10 bytes"),
                                          ("big-custom", "too big for this")])
def test_read_regular_or_raises_the_callers_error_with_the_reason(tmp_path, case, reason):
    paths = {"missing": tmp_path / "nope", "directory": tmp_path, "device": Path("/dev/zero"),
             "big": tmp_path / "big", "big-custom": tmp_path / "big"}
    (tmp_path / "big").write_bytes(bytes(11))

    class Mine(Exception):
        pass

    custom = {"too_large": "too big for this"} if case == "big-custom" else {}
    with pytest.raises(Mine, match=reason):
        atomic.read_regular_or(paths[case], 10, Mine, **custom)
    assert atomic.read_regular_or(tmp_path / "big", 11, Mine) == bytes(11)
