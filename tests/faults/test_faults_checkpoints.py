"""Fault suite, checkpoints (causes 5-7 of issue 17 and stale temporaries): every byte of
a checkpoint is covered by a checksum, every manifest is checked against a schema, a
checkpoint failing either is skipped with a warning in favour of the previous good one
(never ``internal error``, never resumed silently), manifests are read with a size cap
and only from regular files, and runs of different configurations sharing a directory
never touch each other's checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fault_helpers import (
    F,
    invoke,
    manifests,
    one_error_line,
    rewrite_manifest,
    run_cli,
)

from hessfree import checkpoint


@pytest.fixture
def two(tmp_path) -> Path:
    """A directory with the checkpoints of iterations 1 and 2 of the probe's run."""
    ck = tmp_path / "ck"
    assert invoke("train", *F, "--checkpoint-dir", ck).exit_code == 0
    assert len(manifests(ck)) == 2
    return ck


def _resume(ck, *extra):
    return invoke("train", *F[:-1], "3", "--checkpoint-dir", ck, "--resume", *extra)


def _falls_back(result) -> str:
    """The resume skipped the newest checkpoint with one warning and used iteration 1."""
    assert result.exit_code == 0, result.output
    assert "resumed from iteration 1" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipping corrupt checkpoint"), result.stderr
    return warnings[0]


# ------------------------------------------------------------------ cause 5: schema


@pytest.mark.parametrize(
    "change, what",
    [
        (lambda m: [1, 2], "a list"),
        (lambda m: {k: v for k, v in m.items() if k != "config_hash"}, "no config_hash"),
        (lambda m: {**m, "scalars": {k: v for k, v in m["scalars"].items() if k != "damping"}}, "no damping"),
        (lambda m: {**m, "scalars": {**m["scalars"], "damping": "1.0"}}, "damping a string"),
        (lambda m: {**m, "scalars": {**m["scalars"], "iteration": 2.5}}, "iteration a float"),
        (lambda m: {**m, "scalars": {**m["scalars"], "comm": [1]}}, "comm counts a list"),
        (lambda m: {**m, "arrays": {**m["arrays"], "theta": {"dtype": "float64", "shape": [10**12]}}}, "absurd shape"),
        (lambda m: {**m, "iteration": 7}, "iteration not the file's"),
        (lambda m: "text", "a string"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_skipped_like_any_corrupt_checkpoint(two, change, what):
    rewrite_manifest(manifests(two)[-1], change)  # re-signed: only the schema can catch it
    _falls_back(_resume(two))


# ------------------------------------------------------------------ cause 6: checksums


def test_lambda_times_1000_in_the_manifest_is_detected(two):
    newest = manifests(two)[-1]
    manifest = json.loads(newest.read_text())
    manifest["scalars"]["damping"] *= 1000
    newest.write_text(json.dumps(manifest, indent=1))
    assert "checksum" in _falls_back(_resume(two))


def test_every_altered_byte_of_manifest_and_arrays_is_detected(two):
    """Flip one bit of each byte in turn, of the manifest and of the arrays file: every
    time the checkpoint fails its verification (and a resume uses the previous one)."""
    newest = checkpoint.entries(two)[0]
    config_hash = json.loads(newest.manifest.read_text())["config_hash"]
    for target in (newest.manifest, newest.npz):
        original = target.read_bytes()
        fd = os.open(target, os.O_RDWR)
        try:
            for i in range(len(original)):
                os.pwrite(fd, bytes([original[i] ^ (0x01 if i % 2 else 0x20)]), i)  # in place
                with pytest.raises(checkpoint.CheckpointError):
                    checkpoint._read_verified(newest)
                if i % 997 == 0:  # now and then the whole resume path
                    assert checkpoint.load_latest(two, {}, config_hash).iteration == 1
                os.pwrite(fd, original[i: i + 1], i)
        finally:
            os.close(fd)
        assert target.read_bytes() == original
    assert checkpoint.load_latest(two, {}, config_hash).iteration == 2


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory", "huge"])
def test_a_manifest_that_is_not_a_small_regular_file_is_refused_without_reading_it(two, kind):
    newest = manifests(two)[-1]
    config_hash = json.loads(newest.read_text())["config_hash"]
    newest.unlink()
    if kind == "dev-zero":
        os.symlink("/dev/zero", newest)
    elif kind == "fifo":
        os.mkfifo(newest)  # reading it would block forever
    elif kind == "directory":
        newest.mkdir()
    else:
        with open(newest, "wb") as fh:
            fh.truncate(checkpoint.MAX_MANIFEST_BYTES + 1)  # sparse: no disk used
    loaded = checkpoint.load_latest(two, {}, config_hash)
    assert loaded.iteration == 1 and "manifest" in loaded.warnings[0]
    if kind in ("dev-zero", "fifo"):
        # the CLI, in a subprocess with a deadline: before the fix /dev/zero was read
        # until memory ran out, and a FIFO blocked forever
        _falls_back(run_cli("train", *F[:-1], "3", "--checkpoint-dir", two, "--resume", timeout=90))


@pytest.mark.parametrize("kind", ["dev-zero", "truncated", "missing"])
def test_arrays_replaced_by_a_device_truncated_or_missing_are_skipped(two, kind):
    npz = manifests(two)[-1].with_suffix(".npz")
    data = npz.read_bytes()
    npz.unlink()
    if kind == "dev-zero":
        os.symlink("/dev/zero", npz)
    elif kind == "truncated":
        npz.write_bytes(data[:100])
    _falls_back(_resume(two))


def test_no_valid_checkpoint_left_is_one_line(two):
    for path in manifests(two):
        path.write_text("{}")
    result = _resume(two)
    assert result.exit_code == 1
    assert "no valid checkpoint left" in one_error_line(result)


# ------------------------------------------------------------------ cause 7: scoping


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_runs_of_different_configurations_share_a_directory_without_touching_each_other(tmp_path):
    ck = tmp_path / "ck"
    assert invoke("train", *F[:-1], "3", "--checkpoint-dir", ck).exit_code == 0
    first = _snapshot(ck)
    other = invoke("train", *F, "--checkpoint-dir", ck, "--damping", "2")
    assert other.exit_code == 0, other.output
    after = _snapshot(ck)
    assert {k: v for k, v in after.items() if k in first} == first  # nothing overwritten or pruned
    assert len(after) == len(first) + 4  # the other run's own two checkpoints
    resumed_other = invoke("train", *F[:-1], "3", "--checkpoint-dir", ck, "--damping", "2", "--resume")
    assert resumed_other.exit_code == 0, resumed_other.output
    assert "resumed from iteration 2" in resumed_other.stdout
    resumed_first = invoke("train", *F[:-1], "4", "--checkpoint-dir", ck, "--resume")
    assert resumed_first.exit_code == 0, resumed_first.output
    assert "resumed from iteration 3" in resumed_first.stdout


def test_overwrite_replaces_only_this_configurations_checkpoints(tmp_path):
    ck = tmp_path / "ck"
    assert invoke("train", *F, "--checkpoint-dir", ck, "--damping", "2").exit_code == 0
    theirs = _snapshot(ck)
    assert invoke("train", *F, "--checkpoint-dir", ck).exit_code == 0
    refused = invoke("train", *F, "--checkpoint-dir", ck)
    assert refused.exit_code == 2 and "--overwrite" in one_error_line(refused)
    assert invoke("train", *F[:-1], "1", "--checkpoint-dir", ck, "--overwrite").exit_code == 0
    after = _snapshot(ck)
    assert {k: v for k, v in after.items() if k in theirs} == theirs
    assert len(after) == len(theirs) + 2


def test_resume_with_only_another_configurations_checkpoints_names_the_difference(tmp_path):
    ck = tmp_path / "ck"
    assert invoke("train", *F, "--checkpoint-dir", ck).exit_code == 0
    result = _resume(ck, "--damping", "2")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "different configuration" in line and "damping: checkpoint has 1.0, this run has 2.0" in line


# ------------------------------------------------------------------ interrupted writes


def test_stale_temporaries_of_this_run_are_removed_at_start(two):
    scope = checkpoint.entries(two)[0].scope
    dead = 2**22 + 12345  # above any pid_max default: no such process
    stale = [two / f".state-00000003-{scope}.npz.{dead}.k2j4h.tmp", two / f".state-00000003-{scope}.json.{dead}.x9q1z.tmp"]
    others = [two / f".state-00000003-{'0' * 16}.npz.{dead}.abcde.tmp",  # another run's
              two / f".state-00000003-{scope}.npz.{os.getpid()}.live1.tmp"]  # a live writer's
    for path in stale + others:
        path.write_bytes(b"half a checkpoint")
    result = _resume(two)
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in others)
