"""``hessfree cost``: table, stable JSON schema, exit codes, plot, calibrate."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from hessfree.cli.cost_cmd import JSON_KEYS, cost_group
from hessfree.cost import Calibration


@pytest.fixture
def app():
    group = click.Group()
    group.add_command(cost_group)
    return group


def run(app, *args):
    return CliRunner().invoke(app, ["cost", *args], catch_exceptions=False)


def test_json_schema_is_stable(app, tmp_path):
    result = run(app, "--preset", "timit", "--batch", "1024,4096", "--nodes", "1,2,4", "--method", "sgd,bicgstab", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 2 * 2 * 3
    for row in rows:
        assert set(JSON_KEYS) <= set(row)
    assert {(r["method"], r["batch"], r["nodes"]) for r in rows} == {
        (m, b, p) for m in ("sgd", "bicgstab") for b in (1024, 4096) for p in (1, 2, 4)}
    one = [r for r in rows if r["nodes"] == 1]
    assert all(r["speedup"] == 1.0 and r["efficiency"] == 1.0 for r in one)
    hf = next(r for r in rows if r["method"] == "bicgstab")
    assert hf["collectives_per_iteration"] == 1 + 20 + 3 + 1  # gradient, 10 × 2 products, 3 LS, test error


def test_overrides_change_the_prediction(app):
    base = json.loads(run(app, "--preset", "mnist", "--nodes", "4", "--batch", "1000", "--method", "gn-cg", "--json").output)[0]
    fast = json.loads(run(app, "--preset", "mnist", "--nodes", "4", "--batch", "1000", "--method", "gn-cg", "--json",
                          "--flops", "1e15", "--latency", "0", "--bandwidth", "1e15").output)[0]
    assert fast["time_per_iteration_s"] < base["time_per_iteration_s"] / 5  # memory-bound floor remains
    assert fast["communication_s"] < base["communication_s"] / 1000


def test_table_output(app):
    result = run(app, "--preset", "mnist", "--nodes", "1,8", "--batch", "512")
    assert result.exit_code == 0
    assert "bicgstab" in result.output and "speedup" in result.output


@pytest.mark.parametrize("args", [
    ("--flops", "nan"), ("--flops", "-1"), ("--flops", "0"), ("--latency", "-1e-6"), ("--latency", "inf"),
    ("--bandwidth", "0"), ("--bandwidth", "nan"), ("--nodes", "0"), ("--batch", "1,x"), ("--method", "lbfgs"),
    ("--cg-iters", "-1"), ("--preset", "imagenet"), ("--samples", "0"),
])
def test_bad_options_exit_2(app, args):
    result = run(app, "--preset", "mnist", *args) if args[0] != "--preset" else run(app, *args)
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") or "error" in result.output.lower()


def test_plot_writes_png(app, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "fig.png"
    result = run(app, "--preset", "timit", "--nodes", "1,2,4", "--batch", "4096", "--method", "bicgstab", "--plot", str(out))
    assert result.exit_code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_without_mpi_and_use_it(app, tmp_path):
    out = tmp_path / "cal.json"
    result = run(app, "calibrate", "--layers", "20,16,4", "--rows", "8,64", "--no-mpi", "--out", str(out))
    assert result.exit_code == 0, result.output
    calib = Calibration.load(out)
    assert calib.node.flops > 0 and calib.network is None and calib.threads_effective is not None
    assert calib.info["layers"] == [20, 16, 4]
    rows = json.loads(run(app, "--node", "calibrated", "--calibration", str(out), "--layers", "20,16,4",
                          "--samples", "1000", "--nodes", "1", "--batch", "100", "--json").output)
    assert rows[0]["time_per_iteration_s"] > 0


def test_unreadable_calibration_exits_1(app, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = run(app, "--node", "calibrated", "--calibration", str(bad))
    assert result.exit_code == 1 and "error:" in result.output
