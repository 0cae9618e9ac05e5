"""Atomic, verified, pickle-free checkpoints of the full training state.

A checkpoint of iteration k is two files in the checkpoint directory:

* ``state-{k:08d}.npz``: the state's arrays (θ, the warm start δ, the velocity, ...),
  written to a temporary file in the same directory, flushed, fsynced, renamed;
* ``state-{k:08d}.json``: the manifest, written the same way and **last**: format
  version, the hash and the settings of the configuration that determine the trajectory,
  the state's scalars (λ, counters, cursor, clocks), and the SHA-256 of every array.

A checkpoint counts only once its manifest exists and every array matches its checksum.
The newest ``keep`` good checkpoints are kept (older ones are removed after the new one is
verified), so a corrupt newest checkpoint falls back to the previous good one with a
warning. Arrays are read with ``numpy.load(allow_pickle=False)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import attrs
import numpy as np

from hessfree.atomic import atomic_write
from hessfree.errors import CheckpointError

FORMAT_VERSION = 2  # 2: states carry CommCounts and the last solve's curvature (engine refactor)
_NAME = re.compile(r"^state-(\d{8})\.json$")


def _sha256(array: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(array.dtype).encode())
    h.update(str(array.shape).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


@attrs.frozen
class Loaded:
    """A verified checkpoint: its arrays, scalars, and warnings about skipped ones."""

    iteration: int
    arrays: dict
    scalars: dict
    warnings: tuple[str, ...]


def save(directory, iteration: int, arrays: dict[str, np.ndarray], scalars: dict, trajectory: dict, config_hash: str, keep: int = 2) -> Path:
    """Write checkpoint ``iteration`` atomically; returns the manifest path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"state-{iteration:08d}"
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(directory / f"{stem}.npz", buffer.getvalue())
    manifest = dict(
        format_version=FORMAT_VERSION,
        iteration=iteration,
        config_hash=config_hash,
        trajectory=trajectory,
        scalars=scalars,
        arrays={name: dict(sha256=_sha256(np.asarray(a)), dtype=str(np.asarray(a).dtype), shape=list(np.shape(a))) for name, a in arrays.items()},
    )
    path = directory / f"{stem}.json"
    atomic_write(path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    _prune(directory, keep)
    return path


def _manifests(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in directory.iterdir() if directory.is_dir() else []:
        m = _NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry))
    return sorted(found, reverse=True)


def _prune(directory: Path, keep: int) -> None:
    for _, manifest in _manifests(directory)[keep:]:
        for path in (manifest, manifest.with_suffix(".npz")):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def _differences(stored, current, prefix="") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current)):
            out += _differences(stored.get(key, "<absent>"), current.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if stored == current else [f"{prefix[:-1]}: checkpoint has {stored!r}, this run has {current!r}"]


def _read_verified(manifest_path: Path) -> tuple[dict, dict]:
    """(manifest, arrays) or CheckpointError naming what is wrong."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{manifest_path.name}: unreadable manifest ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{manifest_path.name}: format version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    npz = manifest_path.with_suffix(".npz")
    try:
        with np.load(npz, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:  # zipfile, OSError, ValueError: any unreadable archive
        raise CheckpointError(f"{npz.name}: unreadable ({type(exc).__name__}: {exc})") from None
    expected = manifest.get("arrays", {})
    if set(arrays) != set(expected):
        raise CheckpointError(f"{npz.name}: arrays {sorted(arrays)} do not match the manifest's {sorted(expected)}")
    for name, info in expected.items():
        if _sha256(arrays[name]) != info["sha256"]:
            raise CheckpointError(f"{npz.name}: array {name!r} fails its SHA-256 checksum")
    return manifest, arrays


def load_latest(directory, trajectory: dict, config_hash: str) -> Loaded:
    """The newest verified checkpoint of this configuration.

    A checkpoint of another configuration is refused (CheckpointError listing what
    differs); a corrupt one is skipped with a warning in favour of the previous one.
    """
    directory = Path(directory)
    warnings = []
    candidates = _manifests(directory)
    if not candidates:
        raise CheckpointError(f"{directory}: no checkpoint to resume from (expected state-NNNNNNNN.json files)")
    for iteration, path in candidates:
        try:
            manifest, arrays = _read_verified(path)
        except CheckpointError as exc:
            warnings.append(f"skipping corrupt checkpoint: {exc}")
            continue
        if manifest["config_hash"] != config_hash:
            diff = _differences(manifest.get("trajectory", {}), trajectory) or ["(settings hash differs)"]
            raise CheckpointError(f"{path.name} belongs to a different configuration: " + "; ".join(diff))
        return Loaded(iteration, arrays, manifest["scalars"], tuple(warnings))
    raise CheckpointError(f"{directory}: no valid checkpoint left ({'; '.join(warnings)})")
