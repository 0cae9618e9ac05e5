"""The engine refactor changed no number: every method on every backend gives bitwise the
metrics recorded from the code before it (``tests/data/engine_golden.json``, times excepted).

The golden file was written by ``hessfree train --metrics`` on the pre-refactor main; one
label changed on purpose since: ``curvature`` names the operator of the solve
("gauss_newton"/"exact") where the old records said "given" for non-hybrid methods. And
one count: ``epochs`` no longer charges a gradient pass to an iteration whose gradient
came with the previous step's accepted trial (``hessfree.train.hf``, "the gradient taken
along"); every other value, the trajectory included, is still bitwise the old one.
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "mpi"))
from engine_cases import CASES, values  # noqa: E402
from mpi.launch import run_mpi  # noqa: E402

from hessfree.cli.run import run_training

GOLDEN = json.loads((Path(__file__).parent / "data" / "engine_golden.json").read_text())
TIMES = {"time_s", "time_gradient_s", "time_solve_s", "time_line_search_s", "sim_time_s"}


def records(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in d.items() if k not in TIMES and k != "kind"} for d in lines if d["kind"] == "iteration"]


def assert_same(name: str, got: list[dict]) -> None:
    expected = GOLDEN[name]
    assert len(got) == len(expected), name
    for k, (old, new) in enumerate(zip(expected, got)):
        for key, value in old.items():
            assert new[key] == value, f"{name} record {k + 1}: {key} was {value!r}, now {new[key]!r}"


@pytest.mark.parametrize("backend", [dict(), dict(comm="threads", ranks=2)], ids=["serial", "threads2"])
@pytest.mark.parametrize("method", CASES)
def test_metrics_are_bitwise_those_before_the_refactor(method, backend, tmp_path):
    path = tmp_path / "m.jsonl"
    assert run_training(values(method, str(path), **backend), echo=lambda *a, **k: None) == 0
    assert_same(f"{method}-{'threads2' if backend else 'serial'}", records(path))


@pytest.mark.mpi
def test_mpi_metrics_are_bitwise_those_before_the_refactor(tmp_path):
    run = run_mpi(2, "engine_golden.py", str(tmp_path), limit=300)
    assert run.returncode == 0, run.output[-3000:]
    for method in CASES:
        assert_same(f"{method}-mpi2", records(tmp_path / f"{method}-mpi2.jsonl"))
