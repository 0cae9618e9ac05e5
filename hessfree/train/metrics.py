"""The metrics file: JSON lines with a config header, one line per record, a result line.

:class:`MetricsFile` is a :class:`~hessfree.train.fit.Callback`, so it writes on rank 0
only; the header records the resolved settings and the software environment. Every
line is flushed as it is written; an ``OSError`` on the way (a full disk) names the file.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np

from hessfree.atomic import named
from hessfree.train.fit import Callback, FitResult, RunInfo


def environment(backend: str, ranks: int) -> dict:
    """Versions and platform, for a metrics header."""
    import numba

    from hessfree import __version__

    return dict(
        hessfree=__version__,
        python=sys.version.split()[0],
        numpy=np.__version__,
        numba=numba.__version__,
        platform=platform.platform(),
        backend=backend,
        ranks=ranks,
    )


class MetricsFile(Callback):
    """Writes ``path`` (appending when resuming): config line, records, result line."""

    def __init__(self, path: str | os.PathLike, settings: dict, trajectory_hash: str, append: bool = False):
        self.path = Path(path)
        self.settings = settings
        self.trajectory_hash = trajectory_hash
        self.append = append
        self._file = None

    def on_start(self, info: RunInfo) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if self.append else "w", encoding="utf-8")
        except OSError as exc:
            raise named(exc, self.path) from None
        self._write(
            dict(
                kind="config",
                config=self.settings,
                trajectory_hash=self.trajectory_hash,
                model=dict(layers=list(info.layers), n_params=info.n_params),
                data=dict(name=info.data, n_train=info.n_train, n_test=info.n_test),
                environment=environment(info.backend, info.ranks),
            )
        )

    def on_iteration(self, record, state) -> None:
        self._write(dict(kind="iteration", **record.as_dict()))

    def on_end(self, result: FitResult) -> None:
        self._write(dict(kind="result", **result.summary()))
        file, self._file = self._file, None
        try:
            file.close()
        except OSError as exc:
            raise named(exc, self.path) from None

    def _write(self, obj: dict) -> None:
        line = json.dumps(_strict(obj), allow_nan=False, default=_json_default) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:
                pass
            raise named(exc, self.path) from None


def _strict(value):
    """Strict JSON: a non-finite number (a diverged run's loss) is written as null."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
