"""``hessfree plot`` and hessfree.plotting: reading metrics files, groups, median bands, figures."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hessfree.cli.plot_cmd import plot_command
from hessfree.errors import ConfigError, DataError
from hessfree.plotting import (
    MissingDependencyError,
    Run,
    differing_settings,
    group_runs,
    median_band,
    plot_runs,
    read_metrics,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return CliRunner().invoke(plot_command, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_SIGNATURE


# -- real metrics files written by `hessfree train` ---------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from hessfree.cli.run import run_training

    root = tmp_path_factory.mktemp("metrics")
    files = {}
    for name, values in {
        "hf0": dict(method="gn-cg", iterations=3, seed=0),
        "hf1": dict(method="gn-cg", iterations=3, seed=1),
        "sgd0": dict(method="msgd", epochs=2, seed=0),
        "sim": dict(method="gn-cg", iterations=2, seed=0, simulate="omni-path"),
    }.items():
        files[name] = root / f"{name}.jsonl"
        code = run_training(dict(values, hidden="8", metrics=str(files[name]), quiet=True), echo=lambda *a, **k: None)
        assert code == 0
    return files


def test_read_real_metrics_files(real):
    run = read_metrics(real["hf0"])
    assert run.method == "gn-cg" and run.seed == 0 and run.label is None
    assert [r["iteration"] for r in run.records] == [1, 2, 3]
    assert run.result["status"] == "ok"
    assert run.header["data"]["name"] == "digits" and run.header["model"]["layers"][1] == 8
    assert np.all(np.diff(run.values("epochs")) > 0)
    assert np.isnan(run.values("sim_time_s")).all()
    sgd = read_metrics(real["sgd0"], label="baseline")
    assert sgd.method == "msgd" and sgd.name == "baseline" and len(sgd.records) == 2


def test_group_and_band_of_real_runs(real):
    runs = [read_metrics(real[k]) for k in ("hf0", "sgd0", "hf1")]
    groups = group_runs(runs)
    assert list(groups) == ["gn-cg", "msgd"]
    assert [r.seed for r in groups["gn-cg"]] == [0, 1]
    band = median_band(groups["gn-cg"], x="iteration", y="loss")
    assert band.alignment == "index" and band.n_runs == 2
    np.testing.assert_array_equal(band.x, [1, 2, 3])
    assert np.all(band.low <= band.median) and np.all(band.median <= band.high)
    assert differing_settings(groups["gn-cg"]) == []  # the seed (and paths) do not count
    band = median_band(groups["gn-cg"], x="comm_calls", y="train_error")  # index or interpolated: CG counts vary
    assert band.x[0] >= max(r.values("comm_calls")[0] for r in groups["gn-cg"])
    assert band.x[-1] <= min(r.values("comm_calls")[-1] for r in groups["gn-cg"])
    assert np.all(band.low <= band.median) and np.all(band.median <= band.high)


def test_sim_time_of_a_simulated_run(real, tmp_path):
    band = median_band([read_metrics(real["sim"])], x="sim_time_s", y="loss")
    assert band.alignment == "index" and np.all(band.x > 0)
    result = invoke(real["sim"], "--x", "sim_time_s", "--out", tmp_path / "sim.png")
    assert result.exit_code == 0, result.output
    assert is_png(tmp_path / "sim.png")


def test_cli_plots_real_runs(real, tmp_path):
    out = tmp_path / "figs" / "curves.png"  # the directory is created
    result = invoke(real["hf0"], real["hf1"], real["sgd0"], "--y", "train_error,test_error", "--y", "loss",
                    "--x", "epochs", "--out", out, "--title", "digits")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out}" and result.stderr == ""
    assert is_png(out) and out.stat().st_size > 10_000


def test_cli_default_output_is_beside_the_first_file(real):
    result = invoke(real["hf0"], "--linear-y", "--group", "file")
    assert result.exit_code == 0, result.output
    assert is_png(real["hf0"].with_suffix(".png"))


def test_sim_time_of_runs_without_simulation_is_a_clear_error(real):
    with pytest.raises(ConfigError, match=r"hf0\.jsonl: no sim_time_s recorded \(it was trained without --simulate\)"):
        median_band([read_metrics(real["hf0"])], x="sim_time_s", y="loss")
    result = invoke(real["hf0"], "--x", "sim_time_s")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert str(real["hf0"]) in line and "--simulate" in line


# -- hand-made runs -----------------------------------------------------------------------


def make_run(x_name="iteration", xs=(1, 2, 3, 4), ys=(), y_name="train_error", method="gn-cg", seed=0, **extra):
    records = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        rec = dict(kind="iteration", iteration=i + 1, epochs=float(i + 1), loss=1.0, train_error=0.5,
                   test_error=None, time_s=0.1 * (i + 1), sim_time_s=None, comm_calls=10 * (i + 1))
        rec.update({x_name: x, y_name: y})
        records.append(rec)
    config = dict(hidden=[8], train=dict(method=method, seed=seed, **extra))
    return Run(path=Path(f"{method}-{seed}.jsonl"), config=config, header=dict(kind="config", config=config),
               records=tuple(records))


def write_metrics(path: Path, lines) -> Path:
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines), encoding="utf-8")
    return path


def run_lines(run: Run):
    return [run.header, *run.records, dict(kind="result", status="ok")]


SEEDS = [
    [0.5, 0.4, 0.3, 0.2],
    [0.6, 0.3, 0.2, 0.1],
    [0.4, 0.5, 0.25, 0.15],
]


def test_median_and_band_of_three_seeds():
    runs = [make_run(ys=ys, seed=s) for s, ys in enumerate(SEEDS)]
    band = median_band(runs, x="iteration", y="train_error")
    assert band.alignment == "index" and band.n_runs == 3
    np.testing.assert_array_equal(band.x, [1, 2, 3, 4])
    np.testing.assert_allclose(band.median, [0.5, 0.4, 0.25, 0.15])
    np.testing.assert_allclose(band.low, [0.4, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(band.high, [0.6, 0.5, 0.3, 0.2])


def test_index_alignment_keeps_the_steps_every_run_has():
    runs = [make_run(ys=SEEDS[0]), make_run(ys=SEEDS[1][:2], seed=1)]
    band = median_band(runs, x="epochs", y="train_error")  # same epochs: aligned by step
    assert band.alignment == "index"
    np.testing.assert_array_equal(band.x, [1.0, 2.0])
    np.testing.assert_allclose(band.median, [0.55, 0.35])  # even count: mean of the middle two


def test_interpolation_when_x_differs_between_runs():
    a = make_run("time_s", [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], "loss", seed=0)
    b = make_run("time_s", [1.5, 2.5, 3.5], [6.0, 4.0, 2.0], "loss", seed=1)
    c = make_run("time_s", [0.0, 4.0], [8.0, 0.0], "loss", seed=2)
    band = median_band([a, b, c], x="time_s", y="loss")
    assert band.alignment == "interpolated" and band.n_runs == 3
    # union of the x values inside the common range [1.5, 3]
    np.testing.assert_allclose(band.x, [1.5, 2.0, 2.5, 3.0])
    ya = [2.5, 2.0, 1.5, 1.0]
    yb = [6.0, 5.0, 4.0, 3.0]
    yc = [5.0, 4.0, 3.0, 2.0]
    stack = np.array([ya, yb, yc])
    np.testing.assert_allclose(band.median, np.median(stack, axis=0))
    np.testing.assert_allclose(band.median, yc)
    np.testing.assert_allclose(band.low, ya)
    np.testing.assert_allclose(band.high, yb)


def test_runs_that_do_not_overlap_in_x_are_refused():
    a = make_run("time_s", [1.0, 2.0], [3.0, 2.0], "loss")
    b = make_run("time_s", [5.0, 6.0], [3.0, 2.0], "loss", seed=1)
    with pytest.raises(DataError, match="do not overlap"):
        median_band([a, b], x="time_s", y="loss")


def test_null_points_are_skipped_and_an_unrecorded_quantity_is_refused():
    run = make_run(ys=[0.5, None, 0.3, 0.2])
    band = median_band([run], x="iteration", y="train_error")
    np.testing.assert_array_equal(band.x, [1, 3, 4])
    with pytest.raises(ConfigError, match="no test_error recorded .it has no test set"):
        median_band([run], x="iteration", y="test_error")
    with pytest.raises(ConfigError, match="x: expected one of"):
        median_band([run], x="bogus", y="loss")


def test_groups_by_method_label_and_file():
    runs = [make_run(ys=SEEDS[0], method="gn-cg"), make_run(ys=SEEDS[1], method="msgd"),
            make_run(ys=SEEDS[2], method="gn-cg", seed=1)]
    assert {k: len(v) for k, v in group_runs(runs, "method").items()} == {"gn-cg": 2, "msgd": 1}
    assert list(group_runs(runs, "file")) == ["gn-cg-0.jsonl", "msgd-0.jsonl", "gn-cg-1.jsonl"]
    labelled = [Run(path=r.path, config=r.config, header=r.header, records=r.records, label=l)
                for r, l in zip(runs, ["A", "B", "A"])]
    assert {k: len(v) for k, v in group_runs(labelled, "label").items()} == {"A": 2, "B": 1}
    assert list(group_runs(runs, "label")) == ["gn-cg", "msgd"]  # unlabelled: the method
    with pytest.raises(ConfigError):
        group_runs(runs, "colour")


def test_differing_settings_ignore_the_seed():
    a, b = make_run(ys=SEEDS[0]), make_run(ys=SEEDS[1], seed=1)
    assert differing_settings([a, b]) == []
    c = make_run(ys=SEEDS[1], seed=2, damping=2.0)
    d = make_run(ys=SEEDS[1], seed=3, damping=1.0)
    assert differing_settings([c, d]) == ["train.damping"]
    assert differing_settings([a, c]) == []  # a setting older writers lack is not compared


def test_read_metrics_of_a_resumed_run(tmp_path):
    header = dict(kind="config", config=dict(train=dict(method="msgd", seed=0)))
    rec = lambda i, loss: dict(kind="iteration", iteration=i, epochs=float(i), loss=loss, train_error=0.1,
                               test_error=None, time_s=float(i))
    path = write_metrics(tmp_path / "m.jsonl", [
        header, rec(1, 3.0), rec(2, 2.0), rec(3, 1.5), dict(kind="result", status="ok"),
        header, rec(3, 1.0), rec(4, 0.5), "", dict(kind="note", text="ignored"), dict(kind="result", status="ok"),
    ])
    run = read_metrics(path)
    assert [r["iteration"] for r in run.records] == [1, 2, 3, 4]
    np.testing.assert_array_equal(run.values("loss"), [3.0, 2.0, 1.0, 0.5])
    assert run.result == dict(kind="result", status="ok")


def test_an_unfinished_run_has_no_result(tmp_path):
    run = make_run(ys=SEEDS[0])
    run = read_metrics(write_metrics(tmp_path / "m.jsonl", [run.header, *run.records]))
    assert run.result is None and len(run.records) == 4


def valid_plus(*extra):
    """A valid unfinished metrics file (header and 4 records), then ``extra`` lines."""
    return [*run_lines(make_run(ys=SEEDS[0]))[:-1], *extra]


@pytest.mark.parametrize(
    "lines, fragment",
    [
        ([], "not a hessfree metrics file (empty)"),
        (["hello world"], ":1: not a hessfree metrics file: not valid JSON"),
        ([[1, 2]], ":1: not a hessfree metrics line"),
        ([dict(kind="iteration", iteration=1)], ":1: not a hessfree metrics file (the first line must be the config line"),
        ([dict(kind="config", config=3)], ":1: config line without a 'config' object"),
        (valid_plus('{"kind": "iteration", "iter'), ":6: not valid JSON"),
        (valid_plus(dict(kind="iteration", iteration=5, epochs=5)), ":6: iteration line without 'loss'"),
        (valid_plus(dict(kind="iteration", iteration=5, epochs=5, loss="low", train_error=0, time_s=1)),
         ":6: loss is 'low', expected a finite number or null"),
        (valid_plus(dict(kind="iteration", iteration=None, epochs=5, loss=1, train_error=0, time_s=1)),
         ":6: iteration is null"),
    ],
)
def test_malformed_files_are_refused_with_the_path_and_line(tmp_path, lines, fragment):
    path = write_metrics(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as info:
        read_metrics(path)
    assert str(info.value).startswith(str(path)) and fragment in str(info.value)
    result = invoke(path, "--out", tmp_path / "x.png")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert str(path) in line and fragment in line
    assert not (tmp_path / "x.png").exists()


def test_binary_and_directory_inputs_are_refused(tmp_path):
    blob = tmp_path / "blob.jsonl"
    blob.write_bytes(PNG_SIGNATURE + bytes(range(256)))
    with pytest.raises(DataError, match="not a hessfree metrics file .not UTF-8"):
        read_metrics(blob)
    with pytest.raises(DataError, match="is a directory"):
        read_metrics(tmp_path)


def test_a_missing_file_is_a_data_error_exit_1(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        read_metrics(missing)
    result = invoke(missing)
    assert result.exit_code == 1
    assert str(missing) in one_error_line(result)


def test_plot_runs_writes_a_png_from_runs_or_groups(tmp_path):
    runs = [make_run(ys=ys, seed=s) for s, ys in enumerate(SEEDS)] + [make_run(ys=[0.3, 0.1, 0.0, 0.0], method="msgd")]
    out = plot_runs(runs, tmp_path / "a.png", y=["train_error", "loss"], x="iteration")  # errors reach 0: symlog
    assert out == tmp_path / "a.png" and is_png(out)
    out = plot_runs({"mine": runs[:2], "yours": runs[3:]}, tmp_path / "b.svg", y="train_error", x="epochs", log_y=False, title="")
    assert out.read_text().lstrip().startswith("<?xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.svg"]  # no temporary files left
    with pytest.raises(ConfigError, match="cannot write a .xyz figure"):
        plot_runs(runs, tmp_path / "c.xyz")
    with pytest.raises(ConfigError, match="y: expected one of"):
        plot_runs(runs, tmp_path / "c.png", y="accuracy")


def test_matplotlib_is_not_imported_with_the_library():
    code = ("import sys, hessfree.plotting, hessfree.cli.plot_cmd; "
            "assert not any(m == 'matplotlib' or m.startswith('matplotlib.') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    path = write_metrics(tmp_path / "m.jsonl", run_lines(make_run(ys=SEEDS[0])))
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'hessfree\[plot\]'"):
        plot_runs([read_metrics(path)], tmp_path / "m.png")
    result = invoke(path)
    assert result.exit_code == 1
    assert "pip install 'hessfree[plot]'" in one_error_line(result)
    assert not (tmp_path / "m.png").exists()


# -- CLI options --------------------------------------------------------------------------


@pytest.fixture
def three_seeds(tmp_path):
    return [write_metrics(tmp_path / f"s{s}.jsonl", run_lines(make_run(ys=ys, seed=s, damping=1.0))) for s, ys in enumerate(SEEDS)]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--y", "loss,accuracy"], "--y: expected loss, train_error, test_error, found 'accuracy'"),
        (["--label", "a", "--label", "b"], "--label: give one per METRICS file (3), found 2"),
        (["--y", "test_error"], "no test_error recorded (it has no test set)"),
        (["--out", "fig.bmp3"], "cannot write a .bmp3 figure"),
    ],
)
def test_usage_errors_exit_2(three_seeds, args, fragment):
    result = invoke(*three_seeds, *args)
    assert result.exit_code == 2
    assert fragment in one_error_line(result)


def test_click_usage_errors_exit_2(three_seeds):
    assert invoke().exit_code == 2
    assert invoke(*three_seeds, "--x", "wallclock").exit_code == 2


def test_labels_group_runs_and_mixed_groups_warn(tmp_path, three_seeds):
    other = write_metrics(tmp_path / "o.jsonl", run_lines(make_run(ys=SEEDS[0], seed=7, damping=3.0)))
    out = tmp_path / "l.png"
    result = invoke(*three_seeds, other, "--label", "A", "--label", "A", "--label", "B", "--label", "A", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == "warning: group 'A' combines runs that differ in train.damping"
    assert is_png(out)


def test_unwritable_output_exit_1(three_seeds, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke(*three_seeds, "--out", blocker / "fig.png")
    assert result.exit_code == 1
    assert "cannot write the figure" in one_error_line(result)
