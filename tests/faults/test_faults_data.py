"""Fault suite, bad data and absurd sizes (cause 4 of issue 17): sizes implied by files,
labels and options are checked against the data and this machine's memory before
anything is allocated, and refused in one line naming the file, key, label or option;
never ``MemoryError`` naming nothing, never a run the kernel kills later."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest
from fault_helpers import F, invoke, one_error_line, run_cli

from hessfree.errors import ConfigError, DataError
from hessfree.models import MLP

MEMORY_ENV = "HESSFREE_MEMORY_BYTES"  # hessfree.limits.MEMORY_ENV: pretend the machine has this much


def _xy(rows: int = 100, features: int = 5):
    rng = np.random.default_rng(0)
    return rng.standard_normal((rows, features)), rng.integers(0, 3, rows)


def _npy(array: np.ndarray, claimed_shape: str | None = None) -> bytes:
    """``array`` as .npy bytes, its header optionally claiming another shape."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    raw = buffer.getvalue()
    if claimed_shape is None:
        return raw
    size = int.from_bytes(raw[8:10], "little")
    header = raw[10: 10 + size].decode("latin-1")
    real = str(array.shape)
    header = header.replace(real, claimed_shape).rstrip()
    header = header + " " * (size - len(header) - 1) + "\n"
    assert len(header) == size
    return raw[:10] + header.encode("latin-1") + raw[10 + size:]


def _crafted(path, X_bytes: bytes, y: np.ndarray):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("X.npy", X_bytes)
        zf.writestr("y.npy", _npy(y))
    return path


def _train_npz(path, *extra):
    # a subprocess with a deadline: before the fix these allocated terabytes or ran until killed
    return run_cli("train", *F, "--dataset", "npz", "--data-dir", path, *extra, timeout=90)


def test_a_label_of_2_to_the_40_is_refused_naming_the_label(tmp_path):
    X, y = _xy()
    y[7] = 2**40
    np.savez(tmp_path / "big_label.npz", X=X, y=y)
    result = _train_npz(tmp_path / "big_label.npz")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "big_label.npz" in line and "y" in line and f"label {2**40} at row 7" in line and "MemoryError" not in line


def test_a_class_count_of_2_to_the_40_is_refused_naming_the_key(tmp_path):
    X, y = _xy()
    np.savez(tmp_path / "n.npz", X=X, y=y, n_classes=np.int64(2**40))
    result = _train_npz(tmp_path / "n.npz")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "n.npz" in line and "n_classes" in line


@pytest.mark.parametrize("claimed", ["(1000000000000, 5)", "(100, 50000000000)"])
def test_a_header_claiming_terabytes_is_refused_before_allocating(tmp_path, claimed):
    X, y = _xy()
    path = _crafted(tmp_path / "crafted.npz", _npy(X, claimed), y)
    result = _train_npz(path)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "crafted.npz: X" in line and "header declares" in line
    with pytest.raises(DataError, match="crafted.npz: X: size"):
        from hessfree.data import load_dataset

        load_dataset("npz", path=path)


def test_a_device_or_junk_is_not_an_npz(tmp_path):
    result = _train_npz("/dev/zero")
    assert result.exit_code == 1 and "/dev/zero" in one_error_line(result)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    line = one_error_line(_train_npz(junk))
    assert "junk.npz" in line and "pickle" not in line  # not "this file contains pickled data"


def test_absurd_hidden_widths_are_refused_at_once():
    result = run_cli("train", *F, "--hidden", "20000000", timeout=90)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "hidden" in line and "20000000" in line and "memory" in line


def test_the_limit_is_this_machines_memory_not_a_fixed_number(tmp_path):
    """With 1 GiB of memory (the override), 200,000 units do not fit and 100 do."""
    env = {MEMORY_ENV: str(1 << 30)}
    refused = invoke("train", *F, "--hidden", "200000", env=env)
    assert refused.exit_code == 2
    assert "hidden" in one_error_line(refused) and "1.0 GiB" in refused.stderr
    assert invoke("train", *F, "--hidden", "100", env=env).exit_code == 0


def test_too_many_generated_samples_are_refused_naming_samples():
    result = run_cli("train", *F, "--dataset", "synthetic", "--samples", str(10**12), timeout=90)
    assert result.exit_code == 2
    assert "samples" in one_error_line(result)


def test_the_model_refuses_a_layer_wider_than_memory():
    with pytest.raises(ConfigError, match=r"layer 1 \(784→1000000000000 units\)"):
        MLP([784, 10**12, 10])
    MLP([784, 1000, 10])  # an ordinary net is untouched


def test_an_npz_too_large_for_memory_is_refused_naming_the_array(tmp_path, monkeypatch):
    X, y = _xy(1000, 50)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    monkeypatch.setenv(MEMORY_ENV, str(100_000))
    from hessfree.data import load_dataset

    with pytest.raises(DataError, match=r"d.npz: X: size"):
        load_dataset("npz", path=tmp_path / "d.npz")
    monkeypatch.delenv(MEMORY_ENV)
    assert load_dataset("npz", path=tmp_path / "d.npz").n_train == 1000


def test_the_memory_override_is_what_the_limits_read(monkeypatch):
    from hessfree.limits import physical_memory

    monkeypatch.setenv(MEMORY_ENV, "12345")
    assert physical_memory() == 12345
    monkeypatch.delenv(MEMORY_ENV)
    assert physical_memory() == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
