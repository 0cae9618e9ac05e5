"""Atomic, self-verifying, pickle-free checkpoints of the full training state.

A checkpoint of iteration k of the run whose configuration hash is H is two files in the
checkpoint directory, both named after k and the first 16 hex digits of H (the run's
*scope*), so that runs of different configurations can share a directory without ever
touching each other's files:

* ``state-{k:08d}-{H[:16]}.npz``: the state's arrays (θ, the warm start δ, the velocity,
  ...), ``numpy.savez`` (uncompressed), written to a temporary file in the same
  directory, flushed, fsynced, renamed;
* ``state-{k:08d}-{H[:16]}.json``: the manifest, written the same way and **last**.

The manifest (format 3) is JSON. Its first key, ``manifest_sha256``, is the SHA-256 of
the manifest's own bytes with that value replaced by 64 zeros, so **every byte** of the
manifest is covered (the state's scalars, λ included). It also holds the format version,
the iteration, the configuration hash and the settings that determine the trajectory,
the state's scalars, the dtype and shape of every array, and the size and SHA-256 of the
whole ``.npz`` file (so every byte of the arrays file is covered too).

Reading a checkpoint checks, before anything is allocated: that both files are regular
files (a manifest symlinked to ``/dev/zero`` is refused, not read), the manifest's size
cap and checksum, its schema (types of every field; a list, a missing ``config_hash`` or
``damping`` is a corrupt checkpoint), the ``.npz``'s size and checksum, and that every
member's ``.npy`` header declares exactly the manifest's dtype and shape. Then the
caller's ``decode`` turns the payload into a state (its failures count as corruption
too). A checkpoint failing any check is skipped with a warning in favour of the previous
good one of the same run.

Pruning is scoped: after a new checkpoint is written and read back verified, the run's
own newest ``keep`` checkpoints that verify are kept and its other ones (older, or
corrupt) removed; files of other configurations (other scopes) and of older formats are
never touched.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import attrs
import numpy as np

from hessfree.atomic import atomic_write, read_regular_or, remove_stale_temporaries
from hessfree.errors import CheckpointError, DataError

FORMAT_VERSION = 3  # 3: checksummed manifest, whole-file npz checksum, scoped file names
SCOPE_DIGITS = 16
_NAME = re.compile(r"^state-(\d{8,})-([0-9a-f]{16})\.json$")
_LEGACY_NAME = re.compile(r"^state-(\d{8,})\.json$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: a manifest is a few kB; anything larger is refused before it is read
MAX_MANIFEST_BYTES = 16 << 20
#: zip and .npy headers around the arrays' bytes (per member, generous)
_NPZ_OVERHEAD = 4096
_CHECKSUM_KEY = "manifest_sha256"
_PREFIX = b'{\n "' + _CHECKSUM_KEY.encode() + b'": "'
_AFTER = b'",\n'
_ZEROS = b"0" * 64
_DTYPES = ("float32", "float64", "int32", "int64", "bool")


def scope_of(config_hash: str) -> str:
    """The part of a configuration hash that names its checkpoint files."""
    return config_hash[:SCOPE_DIGITS]


def stem_of(iteration: int, config_hash: str) -> str:
    return f"state-{iteration:08d}-{scope_of(config_hash)}"


@attrs.frozen
class Loaded:
    """A verified checkpoint: its arrays, scalars, the decoded state (``decode``'s value,
    None without one) and warnings about skipped ones."""

    iteration: int
    arrays: dict
    scalars: dict
    warnings: tuple[str, ...]
    state: Any = None
    path: Path | None = None


# ---------------------------------------------------------------------------- listing
@attrs.frozen
class Entry:
    iteration: int
    scope: str
    manifest: Path

    @property
    def npz(self) -> Path:
        return self.manifest.with_suffix(".npz")


def entries(directory) -> list[Entry]:
    """Every format-3 checkpoint manifest in ``directory`` (any scope), newest first."""
    directory = Path(directory)
    found = []
    try:
        listing = list(directory.iterdir()) if directory.is_dir() else []
    except OSError:
        listing = []
    for entry in listing:
        m = _NAME.match(entry.name)
        if m:
            found.append(Entry(int(m.group(1)), m.group(2), entry))
    return sorted(found, key=lambda e: (e.iteration, e.scope), reverse=True)


def legacy_manifests(directory) -> list[Path]:
    """Manifests of format 2 and before (``state-NNNNNNNN.json``), which are not resumed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _LEGACY_NAME.match(p.name))


def own(directory, config_hash: str) -> list[Entry]:
    """This configuration's checkpoints in ``directory``, newest first."""
    scope = scope_of(config_hash)
    return [e for e in entries(directory) if e.scope == scope]


def remove(directory, config_hash: str) -> list[Path]:
    """Delete this configuration's checkpoints and stale temporaries (others untouched)."""
    removed = []
    for entry in own(directory, config_hash):
        for path in (entry.manifest, entry.npz):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
    removed += clean_temporaries(directory, config_hash)
    return removed


def clean_temporaries(directory, config_hash: str) -> list[Path]:
    """Remove the temporaries that interrupted writes of this configuration left behind."""
    name = re.compile(r"^state-\d{8,}-" + re.escape(scope_of(config_hash)) + r"\.(json|npz)$")
    return remove_stale_temporaries(directory, name)


# ---------------------------------------------------------------------------- writing
def _array_bytes(info: dict) -> int:
    n = np.dtype(info["dtype"]).itemsize
    for d in info["shape"]:
        n *= d
    return n


def encode_manifest(body: dict) -> bytes:
    """The manifest's bytes: ``body`` as JSON with ``manifest_sha256`` first, covering
    every other byte (see the module docstring)."""
    text = json.dumps(body, indent=1, sort_keys=True).encode()
    rest = text[2:] if len(body) else b"}"
    digest = hashlib.sha256(_PREFIX + _ZEROS + _AFTER + rest).hexdigest().encode()
    return _PREFIX + digest + _AFTER + rest


def save(directory, iteration: int, arrays: dict[str, np.ndarray], scalars: dict, trajectory: dict, config_hash: str,
         keep: int = 2) -> Path:
    """Write checkpoint ``iteration`` atomically, read it back verified, then prune this
    configuration's older ones beyond ``keep``; returns the manifest path. OSErrors name
    the file being written."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(directory)
        raise
    stem = stem_of(iteration, config_hash)
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    blob = buffer.getvalue()
    npz = directory / f"{stem}.npz"
    atomic_write(npz, blob)
    manifest = dict(
        format_version=FORMAT_VERSION,
        iteration=int(iteration),
        config_hash=config_hash,
        trajectory=trajectory,
        scalars=scalars,
        arrays={name: dict(dtype=str(a.dtype), shape=[int(d) for d in a.shape]) for name, a in arrays.items()},
        npz=dict(name=npz.name, bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest()),
    )
    path = directory / f"{stem}.json"
    atomic_write(path, encode_manifest(manifest))
    entry = Entry(int(iteration), scope_of(config_hash), path)
    _VERIFIED.pop((str(entry.manifest), str(entry.npz)), None)
    try:
        _read_verified(entry, load=False)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path} failed its verification right after writing: {exc}") from None
    stamp = _stamp(entry)
    if stamp is not None:
        _VERIFIED[(str(entry.manifest), str(entry.npz))] = stamp
    _prune(directory, config_hash, keep, path)
    return path


#: checkpoints this process verified, by (manifest, npz) → their (size, mtime, inode):
#: pruning need not read an unchanged checkpoint again
_VERIFIED: dict[tuple[str, str], tuple] = {}


def _stamp(entry: Entry) -> tuple | None:
    try:
        a, b = entry.manifest.stat(), entry.npz.stat()
    except OSError:
        return None
    return (a.st_size, a.st_mtime_ns, a.st_ino, b.st_size, b.st_mtime_ns, b.st_ino)


def _verified(entry: Entry) -> bool:
    """Whether ``entry`` passes its checks (remembered while its files are unchanged)."""
    key, stamp = (str(entry.manifest), str(entry.npz)), _stamp(entry)
    if stamp is not None and _VERIFIED.get(key) == stamp:
        return True
    try:
        _read_verified(entry, load=False)
    except CheckpointError:
        _VERIFIED.pop(key, None)
        return False
    if stamp is not None:
        if len(_VERIFIED) > 1024:
            _VERIFIED.clear()
        _VERIFIED[key] = stamp
    return True


def _prune(directory: Path, config_hash: str, keep: int, written: Path) -> None:
    """Keep this configuration's newest ``keep`` checkpoints that verify (``written``, just
    verified, among them); remove the others of this configuration (older ones, and
    corrupt ones, which could never be resumed). Other configurations are not touched."""
    kept = 0
    for entry in own(directory, config_hash):
        if kept < keep:
            if entry.manifest == written or _verified(entry):
                kept += 1
                continue
        for path in (entry.manifest, entry.npz):
            try:
                if path.is_dir() and not path.is_symlink():
                    continue  # not ours to delete
                path.unlink()
            except FileNotFoundError:
                pass


# ---------------------------------------------------------------------------- reading
def _differences(stored, current, prefix="") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current)):
            out += _differences(stored.get(key, "<absent>"), current.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if stored == current else [f"{prefix[:-1]}: checkpoint has {stored!r}, this run has {current!r}"]


def _read_file(path: Path, limit: int, what: str) -> bytes:
    return read_regular_or(path, limit, lambda reason: CheckpointError(f"{path.name}: {what} {reason}"))


def decode_manifest(raw: bytes, name: str) -> dict:
    """The manifest's JSON after its checksum passed (CheckpointError naming ``name``)."""
    start, end = len(_PREFIX), len(_PREFIX) + 64
    if not raw.startswith(_PREFIX) or raw[end: end + len(_AFTER)] != _AFTER:
        raise CheckpointError(f"{name}: not a format-{FORMAT_VERSION} manifest (no leading {_CHECKSUM_KEY})")
    digest = raw[start:end]
    if hashlib.sha256(_PREFIX + _ZEROS + raw[end:]).hexdigest().encode() != digest:
        raise CheckpointError(f"{name}: fails its SHA-256 checksum (the manifest was altered or damaged)")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{name}: unreadable manifest ({exc})") from None
    return manifest


def _json_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _plain(value, depth: int = 0) -> bool:
    """JSON scalars, or dicts of them (nested a little: the comm counts)."""
    if isinstance(value, dict) and depth < 4:
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return _json_scalar(value)


def check_manifest(manifest, entry: Entry) -> dict:
    """``manifest`` if it has the format-3 shape (types of every field), else
    CheckpointError naming the first problem."""
    name = entry.manifest.name

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{name}: malformed manifest: {what}")

    if not isinstance(manifest, dict):
        raise bad(f"expected a JSON object, found {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CheckpointError(f"{name}: format version {version!r}, expected {FORMAT_VERSION}")
    for key, kind in (("iteration", int), ("config_hash", str), ("trajectory", dict), ("scalars", dict),
                      ("arrays", dict), ("npz", dict)):
        if key not in manifest:
            raise bad(f"no {key!r}")
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise bad(f"{key!r} is {type(manifest[key]).__name__}, expected {kind.__name__}")
    if manifest["iteration"] != entry.iteration:
        raise bad(f"iteration {manifest['iteration']} in a file named for {entry.iteration}")
    config_hash = manifest["config_hash"]
    if not _HEX64.match(config_hash) or scope_of(config_hash) != entry.scope:
        raise bad("config_hash does not match the file name")
    scalars = manifest["scalars"]
    if not all(isinstance(k, str) and _plain(v) for k, v in scalars.items()):
        raise bad("scalars: expected numbers, strings, booleans, null or objects of them")
    for array, info in manifest["arrays"].items():
        if not (isinstance(info, dict) and info.get("dtype") in _DTYPES and isinstance(info.get("shape"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 48 for d in info["shape"])
                and len(info["shape"]) <= 8):
            raise bad(f"arrays.{array}: expected a dtype in {list(_DTYPES)} and a shape of non-negative integers")
    npz = manifest["npz"]
    size, digest = npz.get("bytes"), npz.get("sha256")
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0 and isinstance(digest, str) and _HEX64.match(digest)):
        raise bad("npz: expected its size in bytes and its sha256")
    limit = sum(_array_bytes(info) for info in manifest["arrays"].values()) + _NPZ_OVERHEAD * (len(manifest["arrays"]) + 1)
    if size > limit:
        raise bad(f"npz: {size} bytes declared for arrays of {limit - _NPZ_OVERHEAD * (len(manifest['arrays']) + 1)} bytes")
    return manifest


def _read_arrays(entry: Entry, manifest: dict, load: bool = True) -> dict[str, np.ndarray]:
    from hessfree.data.npz import inspect_members

    npz = entry.npz
    declared = manifest["npz"]
    blob = _read_file(npz, declared["bytes"], "the arrays file")
    if len(blob) != declared["bytes"]:
        raise CheckpointError(f"{npz.name}: {len(blob)} bytes, the manifest says {declared['bytes']} (truncated or replaced)")
    if hashlib.sha256(blob).hexdigest() != declared["sha256"]:
        raise CheckpointError(f"{npz.name}: fails its SHA-256 checksum (the arrays file was altered or damaged)")
    expected = manifest["arrays"]
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            members = inspect_members(zf, npz.name, len(blob))
        if set(members) != set(expected):
            raise CheckpointError(f"{npz.name}: arrays {sorted(members)} do not match the manifest's {sorted(expected)}")
        for name, member in members.items():
            info = expected[name]
            if str(member.dtype) != info["dtype"] or list(member.shape) != info["shape"]:
                raise CheckpointError(f"{npz.name}: array {name!r} is {member.dtype} {member.shape}, the manifest says "
                                      f"{info['dtype']} {tuple(info['shape'])}")
        if not load:
            return {}
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except CheckpointError:
        raise
    except DataError as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # zipfile, OSError, ValueError: any unreadable archive
        raise CheckpointError(f"{npz.name}: unreadable ({type(exc).__name__}: {exc})") from None


def _read_verified(entry: Entry, load: bool = True) -> tuple[dict, dict]:
    """(manifest, arrays) of a checkpoint that passes every check, or CheckpointError
    (``load=False``: verify the bytes only, no arrays)."""
    raw = _read_file(entry.manifest, MAX_MANIFEST_BYTES, "the manifest")
    manifest = check_manifest(decode_manifest(raw, entry.manifest.name), entry)
    return manifest, _read_arrays(entry, manifest, load)


def check_payload(template: tuple[dict, dict], arrays: dict, scalars: dict) -> None:
    """CheckpointError unless ``arrays``/``scalars`` have the names, dtypes, shapes and
    types of ``template`` (the payload of a fresh state of the same run): what a state
    built from them needs. Extra scalars are allowed; ``None`` in the template may hold
    any scalar (an enum stored by value, an absent array)."""
    want_arrays, want_scalars = template
    if set(arrays) != set(want_arrays):
        raise CheckpointError(f"holds arrays {sorted(arrays)}, this run's state has {sorted(want_arrays)}")
    for name, want in want_arrays.items():
        got = arrays[name]
        if got.dtype != want.dtype or got.shape != want.shape:
            raise CheckpointError(f"array {name!r} is {got.dtype} {got.shape}, this run's state has "
                                  f"{want.dtype} {want.shape}")
    problems = []
    _same_kind(want_scalars, scalars, "scalars", problems, allow_extra=True)
    if problems:
        raise CheckpointError(f"malformed manifest: {problems[0]}")


def _same_kind(want, got, path: str, problems: list, allow_extra: bool = False) -> None:
    if isinstance(want, dict):
        if not isinstance(got, dict):
            problems.append(f"{path} is {type(got).__name__}, expected an object")
            return
        missing = sorted(set(want) - set(got))
        if missing:
            problems.append(f"{path} lacks {', '.join(missing)}")
            return
        if not allow_extra and set(got) - set(want):
            problems.append(f"{path} has unknown {', '.join(sorted(set(got) - set(want)))}")
            return
        for key in want:
            _same_kind(want[key], got[key], f"{path}.{key}", problems)
        return
    if want is None:
        if not _json_scalar(got):
            problems.append(f"{path} is {type(got).__name__}, expected a scalar")
        return
    if isinstance(want, bool):
        ok = isinstance(got, bool)
    elif isinstance(want, int):
        ok = isinstance(got, int) and not isinstance(got, bool)
    elif isinstance(want, float):
        ok = isinstance(got, (int, float)) and not isinstance(got, bool)
    elif isinstance(want, str):
        ok = isinstance(got, str)
    else:
        ok = _json_scalar(got)
    if not ok:
        problems.append(f"{path} is {got!r}, expected {type(want).__name__}")


def load_latest(directory, trajectory: dict, config_hash: str, *,
                decode: Callable[[dict, dict], Any] | None = None) -> Loaded:
    """The newest verified checkpoint of this configuration.

    Checkpoints that fail a check (or ``decode(arrays, scalars)``, which builds the
    state) are skipped with a warning in favour of the previous one of this
    configuration. Without any of this configuration, a directory holding another
    configuration's checkpoint is refused naming every setting that differs.
    """
    directory = Path(directory)
    warnings = []
    mine = own(directory, config_hash)
    for entry in mine:
        try:
            manifest, arrays = _read_verified(entry)
            if manifest["config_hash"] != config_hash:
                raise CheckpointError(f"{entry.manifest.name}: configuration hash differs from its file name's")
            state = None
            if decode is not None:
                try:
                    state = decode(arrays, manifest["scalars"])
                except CheckpointError as exc:
                    raise CheckpointError(f"{entry.manifest.name}: {exc}") from None
                except (KeyError, TypeError, ValueError, AttributeError, DataError) as exc:
                    raise CheckpointError(f"{entry.manifest.name}: malformed state ({type(exc).__name__}: {exc})") from None
        except CheckpointError as exc:
            warnings.append(f"skipping corrupt checkpoint: {exc}")
            continue
        return Loaded(entry.iteration, arrays, manifest["scalars"], tuple(warnings), state, entry.manifest)
    if mine:
        raise CheckpointError(f"{directory}: no valid checkpoint left ({'; '.join(warnings)})")
    others = entries(directory)
    if others:
        newest = others[0]
        try:
            manifest = check_manifest(decode_manifest(_read_file(newest.manifest, MAX_MANIFEST_BYTES, "the manifest"),
                                                      newest.manifest.name), newest)
            diff = _differences(manifest["trajectory"], trajectory) or ["(settings hash differs)"]
        except CheckpointError as exc:
            diff = [f"(its manifest is unreadable: {exc})"]
        raise CheckpointError(
            f"{directory}: no checkpoint of this configuration; {newest.manifest.name} belongs to a different "
            f"configuration: " + "; ".join(diff)
        )
    legacy = legacy_manifests(directory)
    if legacy:
        raise CheckpointError(
            f"{directory}: holds only checkpoints of an older format ({legacy[-1].name}), which this version "
            f"of hessfree cannot resume; start a new run"
        )
    raise CheckpointError(f"{directory}: no checkpoint to resume from (expected state-NNNNNNNN-<config>.json files)")
