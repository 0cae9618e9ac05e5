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
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "mpi"))
from engine_cases import CASES  # noqa: E402
from mpi.launch import run_mpi  # noqa: E402

HERE = Path(__file__).parent
GOLDEN = json.loads((HERE / "data" / "engine_golden.json").read_text())
TIMES = {"time_s", "time_gradient_s", "time_solve_s", "time_line_search_s", "sim_time_s"}
#: the OpenBLAS kernels the golden file was recorded with. Bitwise values hold for one set
#: of GEMM kernels: OpenBLAS picks these on Intel CPUs with AVX-512 but its Haswell ones on
#: AMD CPUs with AVX-512, whose sums round differently. The runs are child processes that
#: ask for them (``OPENBLAS_CORETYPE`` is read when OpenBLAS loads); a CPU without AVX-512
#: cannot run them, and the comparison is skipped there.
KERNELS = "SkylakeX"


def _has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _has_avx512(), reason=f"the bitwise goldens need OpenBLAS's {KERNELS} kernels: a CPU with AVX-512")


@pytest.fixture
def recorded_kernels(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", KERNELS)


def records(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in d.items() if k not in TIMES and k != "kind"} for d in lines if d["kind"] == "iteration"]


def assert_same(name: str, got: list[dict]) -> None:
    expected = GOLDEN[name]
    assert len(got) == len(expected), name
    for k, (old, new) in enumerate(zip(expected, got)):
        for key, value in old.items():
            assert new[key] == value, f"{name} record {k + 1}: {key} was {value!r}, now {new[key]!r}"


@pytest.mark.parametrize("backend", ["serial", "threads2"])
def test_metrics_are_bitwise_those_before_the_refactor(backend, tmp_path, recorded_kernels):
    run = subprocess.run([sys.executable, str(HERE / "mpi" / "engine_golden.py"), str(tmp_path), backend],
                         capture_output=True, text=True, timeout=300, cwd=HERE / "mpi", env=dict(os.environ))
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    for method in CASES:
        assert_same(f"{method}-{backend}", records(tmp_path / f"{method}-{backend}.jsonl"))


@pytest.mark.mpi
def test_mpi_metrics_are_bitwise_those_before_the_refactor(tmp_path, recorded_kernels):
    run = run_mpi(2, "engine_golden.py", str(tmp_path), limit=300)
    assert run.returncode == 0, run.output[-3000:]
    for method in CASES:
        assert_same(f"{method}-mpi2", records(tmp_path / f"{method}-mpi2.jsonl"))
