"""Resume anywhere: a checkpoint continues on another rank count or backend (serial, thread
ranks, mpirun), and with the same data in another directory; datasets are identified by
their content; settings that change the trajectory are still refused, each named."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mpi.launch import run_mpi

from hessfree.cli.main import main
from hessfree.data import ShardMode, load_dataset
from hessfree.data.idx import write_idx
from hessfree.train.runconfig import make_run_config

HF = ["--method", "gn-cg", "--hidden", "16", "--batch-size", "200", "--cg-max-iter", "12", "--seed", "1"]
SGD = ["--method", "msgd", "--hidden", "16", "--batch-size", "100", "--seed", "1", "--lr", "0.05"]
NOTE = "reduction order differs, results match to rounding, not bitwise"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def records(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "iteration"]


def theta(directory: Path, iteration: int) -> np.ndarray:
    with np.load(next(directory.glob(f"state-{iteration:08d}-*.npz")), allow_pickle=False) as archive:
        return archive["theta"]


def npz_dataset(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((300, 12))
    y = (X[:, :3].sum(axis=1) > 0).astype(np.int64) + 2 * (X[:, 3] > 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, X=X[:240], y=y[:240], X_test=X[240:], y_test=y[240:])
    return path


# ------------------------------------------------------------------ content fingerprints
@pytest.mark.parametrize("name, options", [("digits", {}), ("synthetic", dict(samples=3000)), ("npz", None)])
def test_the_fingerprint_is_the_same_on_every_rank_for_any_rank_count(tmp_path, name, options):
    if options is None:
        options = dict(path=npz_dataset(tmp_path / "d.npz"))
    prints = {
        load_dataset(name, rank=rank, size=size, shard=ShardMode.STRIDED, **options).fingerprint
        for size in (1, 2, 3) for rank in range(size)
    }
    assert len(prints) == 1 and len(prints.pop()) == 64
    held_out = load_dataset(name, validation=0.25, **options).fingerprint
    assert held_out == load_dataset(name, **options).fingerprint  # selections are separate settings


def test_the_fingerprint_follows_the_content_not_the_path(tmp_path):
    a = npz_dataset(tmp_path / "a" / "d.npz")
    b = tmp_path / "b" / "elsewhere.npz"
    b.parent.mkdir()
    shutil.copy(a, b)
    changed = npz_dataset(tmp_path / "c" / "d.npz", seed=1)
    fa, fb, fc = (load_dataset("npz", path=p).fingerprint for p in (a, b, changed))
    assert fa == fb != fc


def test_idx_files_plain_or_compressed_anywhere_share_a_fingerprint(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (40, 4, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 40, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 4, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 10, dtype=np.uint8),
    }
    for folder, suffix in (("plain", ""), ("gz", ".gz")):
        (tmp_path / folder).mkdir()
        for stem, array in arrays.items():
            write_idx(tmp_path / folder / f"{stem}{suffix}", array)
    plain = load_dataset("mnist", data_dir=tmp_path / "plain")
    packed = load_dataset("mnist", data_dir=tmp_path / "gz", rank=1, size=2)
    assert plain.fingerprint == packed.fingerprint and plain.scaling.divide_by == 255.0
    arrays["t10k-labels-idx1-ubyte"][0] = (arrays["t10k-labels-idx1-ubyte"][0] + 1) % 10
    (tmp_path / "other").mkdir()
    for stem, array in arrays.items():
        write_idx(tmp_path / "other" / stem, array)
    assert load_dataset("mnist", data_dir=tmp_path / "other").fingerprint != plain.fingerprint


def test_generated_data_is_identified_by_its_parameters():
    base = load_dataset("synthetic", samples=2000, seed=0).fingerprint
    assert base == load_dataset("synthetic", samples=2000, seed=0, rank=1, size=3).fingerprint
    assert base != load_dataset("synthetic", samples=2000, seed=1).fingerprint
    assert base != load_dataset("synthetic", samples=3000, seed=0).fingerprint


def test_the_trajectory_names_neither_rank_count_nor_path(tmp_path):
    a = npz_dataset(tmp_path / "a" / "d.npz")
    b = tmp_path / "b.npz"
    shutil.copy(a, b)
    one = make_run_config(dict(dataset="npz", data_dir=str(a)))
    two = make_run_config(dict(dataset="npz", data_dir=str(b), comm="threads", ranks=2))
    assert one.trajectory() == two.trajectory() and one.trajectory_hash() == two.trajectory_hash()
    assert "ranks" not in one.trajectory() and "data_dir" not in one.trajectory()
    assert one.trajectory()["data"] == load_dataset("npz", path=a).fingerprint


# ------------------------------------------------------------------ another rank count or backend
@pytest.mark.parametrize("method, n", [(HF, "--iterations"), (SGD, "--epochs")], ids=["gn-cg", "msgd"])
def test_a_serial_checkpoint_continues_on_two_thread_ranks(tmp_path, method, n):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert invoke("train", *method, n, "5", "--checkpoint-dir", whole, "--metrics", whole / "m.jsonl", "--quiet").exit_code == 0
    assert invoke("train", *method, n, "2", "--checkpoint-dir", part, "--metrics", part / "m.jsonl", "--quiet").exit_code == 0
    result = invoke("train", *method, n, "5", "--checkpoint-dir", part, "--metrics", part / "m.jsonl", "--resume",
                    "--comm", "threads", "--ranks", "2")
    assert result.exit_code == 0, result.output
    assert "resumed from iteration 2" in result.stdout
    assert f"note: 1 rank (serial) → 2 ranks (threads): {NOTE}" in result.stdout
    expected, got = records(whole / "m.jsonl"), records(part / "m.jsonl")
    assert [r["iteration"] for r in got] == [r["iteration"] for r in expected]
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in expected], rtol=1e-9)
    np.testing.assert_allclose(theta(part, 5), theta(whole, 5), rtol=1e-8, atol=1e-10)


def test_a_thread_checkpoint_continues_serially_and_same_ranks_say_nothing(tmp_path):
    ck = tmp_path / "ck"
    args = [*HF, "--checkpoint-dir", ck]
    assert invoke("train", *args, "--iterations", "2", "--comm", "threads", "--ranks", "2", "--quiet").exit_code == 0
    serial = invoke("train", *args, "--iterations", "3", "--resume")
    assert serial.exit_code == 0, serial.output
    assert f"note: 2 ranks (threads) → 1 rank (serial): {NOTE}" in serial.stdout
    again = invoke("train", *args, "--iterations", "4", "--resume")
    assert again.exit_code == 0 and "note:" not in again.stdout  # same rank count and backend: bitwise


@pytest.mark.mpi
def test_a_serial_checkpoint_continues_under_mpirun(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert invoke("train", *HF, "--iterations", "4", "--metrics", whole / "m.jsonl", "--quiet").exit_code == 0
    assert invoke("train", *HF, "--iterations", "2", "--checkpoint-dir", part, "--metrics", part / "m.jsonl",
                  "--quiet").exit_code == 0
    run = run_mpi(2, "train_cli.py", "train", *HF, "--iterations", "4", "--checkpoint-dir", str(part), "--resume",
                  "--comm", "mpi", "--metrics", str(part / "m.jsonl"), limit=180)
    assert run.returncode == 0, run.output[-3000:]
    assert run.output.count(f"note: 1 rank (serial) → 2 ranks (mpi): {NOTE}") == 1  # rank 0 only
    expected, got = records(whole / "m.jsonl"), records(part / "m.jsonl")
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in expected], rtol=1e-9)


# ------------------------------------------------------------------ the same data elsewhere
def test_a_checkpoint_resumes_with_the_same_data_in_another_directory(tmp_path):
    a = npz_dataset(tmp_path / "laptop" / "d.npz")
    b = tmp_path / "cluster" / "data" / "d.npz"
    b.parent.mkdir(parents=True)
    shutil.copy(a, b)
    args = ["--dataset", "npz", *HF]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert invoke("train", *args, "--data-dir", a, "--iterations", "4", "--checkpoint-dir", whole, "--quiet").exit_code == 0
    assert invoke("train", *args, "--data-dir", a, "--iterations", "2", "--checkpoint-dir", part, "--quiet").exit_code == 0
    result = invoke("train", *args, "--data-dir", b, "--iterations", "4", "--checkpoint-dir", part, "--resume")
    assert result.exit_code == 0, result.output
    assert "resumed from iteration 2" in result.stdout and "note:" not in result.stdout
    np.testing.assert_array_equal(theta(part, 4), theta(whole, 4))  # same rank count: bitwise


def test_other_data_and_other_settings_are_still_refused_each_named(tmp_path):
    a = npz_dataset(tmp_path / "a" / "d.npz")
    other = npz_dataset(tmp_path / "b" / "d.npz", seed=5)
    ck = tmp_path / "ck"
    args = ["--dataset", "npz", *HF, "--checkpoint-dir", ck]
    assert invoke("train", *args, "--data-dir", a, "--iterations", "1", "--quiet").exit_code == 0
    data = invoke("train", *args, "--data-dir", other, "--iterations", "2", "--resume")
    assert data.exit_code == 1
    assert "different configuration" in (line := one_error_line(data)) and "data: checkpoint has" in line
    settings = invoke("train", *args, "--data-dir", a, "--iterations", "2", "--resume", "--dtype", "float32",
                      "--weight-decay", "0.01", "--hidden", "8")
    assert settings.exit_code == 1
    line = one_error_line(settings)
    assert "dtype:" in line and "train.weight_decay:" in line and "hidden:" in line and "data:" not in line


MNIST_DIR = Path(os.environ.get("HESSFREE_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared/data/mnist"))


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="the real MNIST is not present")
def test_mnist_files_copied_to_another_directory_resume(tmp_path):
    copy = tmp_path / "mnist-copy"
    shutil.copytree(MNIST_DIR, copy)
    args = ["--dataset", "mnist", "--samples", "2000", "--hidden", "32", "--batch-size", "500", "--cg-max-iter", "10",
            "--method", "gn-cg", "--checkpoint-dir", tmp_path / "ck"]
    assert invoke("train", *args, "--data-dir", MNIST_DIR, "--iterations", "1", "--quiet").exit_code == 0
    result = invoke("train", *args, "--data-dir", copy, "--iterations", "2", "--resume", "--comm", "threads", "--ranks", "2")
    assert result.exit_code == 0, result.output
    assert "resumed from iteration 1" in result.stdout and "1 rank (serial) → 2 ranks (threads)" in result.stdout


def test_the_trajectory_holds_the_resolved_backtracking():
    """A default run keeps the identity its checkpoints had when CG-backtracking was every
    HF method's default; a default gn-cg run (now the last iterate) does not."""
    def train(**values):
        return make_run_config(dict(dataset="digits", **values)).trajectory()["train"]

    assert train(method="bicgstab") == train(method="bicgstab", backtracking=True)
    assert train(method="msgd") == train(method="msgd", backtracking=True)
    assert train(method="gn-cg") == train(method="gn-cg", backtracking=False)
    assert train(method="gn-cg")["backtracking"] is False and train(method="gn-cg", backtracking=True)["backtracking"] is True


def test_a_default_gn_cg_identity_holds_its_resolved_krylov_cap():
    """gn-cg's default cap changed from 250 to 5: its default identity records the 5, so a
    checkpoint that recorded None (the 250 then) is not taken for it; the identities of the
    methods whose default did not change stay as they were (None)."""
    def train(**values):
        return make_run_config(dict(dataset="digits", **values)).trajectory()["train"]

    assert train(method="gn-cg")["cg_max_iter"] == 5
    assert train(method="gn-cg") == train(method="gn-cg", cg_max_iter=5)
    assert train(method="gn-cg", cg_max_iter=250)["cg_max_iter"] == 250
    for method in ("hess-cg", "bicgstab", "hybrid", "newton-mr", "msgd"):
        assert train(method=method)["cg_max_iter"] is None
    # the library's checkpoints (fit) identify a trajectory by the same settings
    from hessfree.train import TrainConfig

    assert TrainConfig(method="gn-cg").identity() == train(method="gn-cg")  # backtracking False too
    assert TrainConfig(method="hess-cg").identity()["cg_max_iter"] is None
    assert TrainConfig(method="hess-cg").identity()["backtracking"] is None  # unchanged: still its default


def test_a_checkpoint_of_the_old_default_cap_is_refused_by_name(tmp_path, monkeypatch):
    """A default gn-cg checkpoint written when None meant 250 (the identity before the change,
    made here by emptying the set of changed defaults) is refused naming cg_max_iter, and
    stays on disk."""
    import hessfree.train.config as train_config

    args = ["--hidden", "8", "--batch-size", "100", "--checkpoint-dir", str(tmp_path / "ck"), "--quiet"]
    with monkeypatch.context() as patch:
        patch.setattr(train_config, "DEFAULTS_CHANGED", {**train_config.DEFAULTS_CHANGED, "cg_max_iter": frozenset()})
        assert CliRunner().invoke(main, ["train", *args, "--iterations", "1"]).exit_code == 0
    saved = sorted(p.name for p in (tmp_path / "ck").iterdir())
    result = CliRunner().invoke(main, ["train", *args, "--iterations", "2", "--resume"])
    assert result.exit_code != 0
    assert "train.cg_max_iter: checkpoint has None, this run has 5" in result.output
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == saved
