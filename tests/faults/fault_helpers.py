"""Shared pieces of the fault suite: running ``hessfree train`` in-process or as a
subprocess (with a deadline, so a hang is a failure), the one-line error check, and
small helpers to build bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from hessfree.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
MPI_DIR = ROOT / "tests" / "mpi"
if str(MPI_DIR) not in sys.path:
    sys.path.insert(0, str(MPI_DIR))

#: the probe's base options: a small, fast run
F = ["--method", "gn-cg", "--hidden", "10", "--batch-size", "200", "--quiet", "--iterations", "2"]
#: the same without ``--quiet`` and the run length (tests that look at progress output)
LOUD = ["--method", "gn-cg", "--hidden", "10", "--batch-size", "200"]


def invoke(*args, env: dict | None = None):
    """``hessfree ARGS`` in this process (CliRunner): exit_code, stdout, stderr."""
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


class Run:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.exit_code, self.stdout, self.stderr = returncode, stdout, stderr
        self.output = stdout + stderr


def run_cli(*args, timeout: float = 120, env: dict | None = None, cwd=None) -> Run:
    """``hessfree ARGS`` as a subprocess; a run outliving ``timeout`` fails the test."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "hessfree", *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False,
        env=full_env, cwd=cwd,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def one_error_line(result) -> str:
    """The single ``error: ...`` line of stderr (nothing else there, no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert "internal error" not in lines[0], lines[0]
    return lines[0]


def manifests(directory: Path) -> list[Path]:
    """Checkpoint manifests of a directory, oldest first (any format, any run)."""
    return sorted(Path(directory).glob("state-*.json"))


def rewrite_manifest(path: Path, change) -> None:
    """Apply ``change(manifest) -> manifest`` and write it back *with a valid checksum*
    when the format has one: the result is well-signed, so only the schema can catch it."""
    from hessfree import checkpoint

    manifest = json.loads(path.read_text())
    if isinstance(manifest, dict):
        manifest.pop("manifest_sha256", None)
    manifest = change(manifest)
    encode = getattr(checkpoint, "encode_manifest", None)
    if encode is not None and isinstance(manifest, dict):
        path.write_bytes(encode(manifest))
    else:
        path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
