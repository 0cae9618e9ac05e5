"""``hessfree train``: options, config files, exit codes, metrics, checkpoints and resume."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hessfree.cli.main import main

SMALL = ["--hidden", "16", "--batch-size", "200", "--cg-max-iter", "15", "--seed", "1"]
#: the first-order methods take no Krylov cap (an option that does not apply is an error)
SMALL_FIRST_ORDER = ["--hidden", "16", "--batch-size", "200", "--seed", "1"]


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def one_error_line(result) -> str:
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_default_train_runs_on_the_embedded_digits():
    result = invoke("train", "--iterations", "2", *SMALL)
    assert result.exit_code == 0, result.output
    assert "digits" in result.stdout and "done: 2 iterations" in result.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--iterations", "0"], "iterations: expected an integer ≥ 1"),
        (["--damping", "nan"], "damping: expected a finite number"),
        (["--damping", "-1"], "damping: expected a number in (0, ∞)"),
        (["--momentum", "1.5"], "momentum"),
        (["--hidden", "4,x"], "hidden"),
        (["--ranks", "2", "--comm", "serial"], "ranks"),
        (["--resume"], "resume: needs checkpoint_dir"),
    ],
)
def test_bad_options_exit_2_with_one_line(args, fragment):
    result = invoke("train", *args)
    assert result.exit_code == 2
    assert fragment in one_error_line(result)


def test_click_usage_errors_exit_2():
    assert invoke("train", "--method", "lbfgs").exit_code == 2
    assert invoke("train", "--no-such-flag").exit_code == 2


def test_config_file_keys_and_flag_override(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('method = "gn-cg"\niterations = 5\nhidden = [16]\nbatch_size = 200\n[train]\ncg_max_iter = 10\n')
    result = invoke("train", "--config", str(cfg), "--iterations", "1", "--metrics", str(tmp_path / "m.jsonl"))
    assert result.exit_code == 0, result.output
    lines = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert lines[0]["config"]["train"]["method"] == "gn-cg"
    assert lines[0]["config"]["train"]["iterations"] == 1  # the flag wins
    assert lines[0]["config"]["train"]["cg_max_iter"] == 10


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("itterations = 3\n", "itterations: unknown key"),
        ('iterations = "three"\n', "iterations"),
        ("damping = nan\n", "damping: expected a finite number"),
        ("damping = inf\n", "damping: expected a finite number"),
        ("hidden = [16, 0]\n", "hidden"),
        ("not toml at all [\n", "not valid TOML"),
    ],
)
def test_bad_config_files_exit_2_naming_the_key(tmp_path, text, fragment):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    result = invoke("train", "--config", str(cfg))
    assert result.exit_code == 2
    assert fragment in one_error_line(result)


def test_data_errors_exit_1(tmp_path):
    result = invoke("train", "--dataset", "mnist", "--data-dir", str(tmp_path / "missing"))
    assert result.exit_code == 1
    assert "mnist" in one_error_line(result)


def test_divergence_exits_3():
    result = invoke("train", "--method", "sgd", "--lr", "1e308", "--epochs", "3", "--quiet")
    assert result.exit_code == 3
    assert "diverged" in one_error_line(result)


def test_metrics_file_format(tmp_path):
    path = tmp_path / "metrics.jsonl"
    result = invoke("train", "--iterations", "2", "--metrics", str(path), *SMALL)
    assert result.exit_code == 0, result.output
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert [l["kind"] for l in lines] == ["config", "iteration", "iteration", "result"]
    assert {"versions", "backend", "ranks"} & set(lines[0]["environment"]) == {"backend", "ranks"}
    keys = {"iteration", "epochs", "comm_calls", "comm_bytes", "loss", "train_error", "test_error", "time_s",
            "cg_iterations", "damping", "step_size", "negative_curvature"}
    assert keys <= set(lines[1]) and [l["iteration"] for l in lines[1:3]] == [1, 2]
    assert lines[-1]["status"] == "ok" and lines[-1]["iterations"] == 2


def _records(path):
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "iteration":
            out.append({k: v for k, v in rec.items() if not k.startswith("time")})
    return out


@pytest.mark.parametrize("method", ["hybrid", "bicgstab", "msgd"])
def test_resume_is_bitwise(tmp_path, method):
    n = ["--epochs"] if method == "msgd" else ["--iterations"]
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--method", method, *(SMALL_FIRST_ORDER if method == "msgd" else SMALL)]
    assert invoke("train", *args, *n, "6", "--checkpoint-dir", str(one), "--metrics", str(one / "m.jsonl")).exit_code == 0
    assert invoke("train", *args, *n, "3", "--checkpoint-dir", str(two), "--metrics", str(two / "m.jsonl")).exit_code == 0
    result = invoke("train", *args, *n, "6", "--checkpoint-dir", str(two), "--metrics", str(two / "m.jsonl"), "--resume")
    assert result.exit_code == 0, result.output
    assert "resumed from iteration 3" in result.stdout
    a = np.load(next(one.glob("state-00000006-*.npz")), allow_pickle=False)
    b = np.load(next(two.glob("state-00000006-*.npz")), allow_pickle=False)
    assert set(a.files) == set(b.files)
    for name in a.files:
        assert np.array_equal(a[name], b[name]), name
    ra, rb = _records(one / "m.jsonl"), _records(two / "m.jsonl")
    assert [r["iteration"] for r in rb][3:] == [r["iteration"] for r in ra][3:]
    assert ra == rb


def test_resume_refuses_another_configuration(tmp_path):
    ck = tmp_path / "ck"
    assert invoke("train", *SMALL, "--iterations", "1", "--checkpoint-dir", str(ck)).exit_code == 0
    result = invoke("train", *SMALL, "--iterations", "2", "--checkpoint-dir", str(ck), "--resume", "--damping", "2")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "different configuration" in line and "damping" in line


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path):
    ck = tmp_path / "ck"
    assert invoke("train", *SMALL, "--iterations", "2", "--checkpoint-dir", str(ck)).exit_code == 0
    newest = next(ck.glob("state-00000002-*.npz"))
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    result = invoke("train", *SMALL, "--iterations", "3", "--checkpoint-dir", str(ck), "--resume")
    assert result.exit_code == 0, result.output
    assert "warning: skipping corrupt checkpoint" in result.stderr
    assert "resumed from iteration 1" in result.stdout


def test_threads_backend_from_the_cli():
    result = invoke("train", "--comm", "threads", "--ranks", "2", "--iterations", "2", *SMALL)
    assert result.exit_code == 0, result.output
    assert "2 ranks (threads)" in result.stdout


def test_simulated_cluster_time_in_the_metrics(tmp_path):
    path = tmp_path / "sim.jsonl"
    result = invoke("train", "--comm", "threads", "--ranks", "2", "--simulate", "ethernet-10g", "--iterations", "2",
                    "--metrics", str(path), *SMALL)
    assert result.exit_code == 0, result.output
    records = [json.loads(l) for l in path.read_text().splitlines() if '"iteration"' in l and '"kind": "iteration"' in l]
    times = [r["sim_time_s"] for r in records]
    assert len(times) == 2 and 0 < times[0] < times[1]
    # the network part alone: every collective costs at least the latency α = 25 µs
    assert times[1] > records[1]["comm_calls"] * 25e-6
    plain = tmp_path / "plain.jsonl"
    assert invoke("train", "--iterations", "1", "--metrics", str(plain), *SMALL).exit_code == 0
    assert json.loads(plain.read_text().splitlines()[1])["sim_time_s"] is None


def test_simulation_overrides_need_a_preset():
    result = invoke("train", "--sim-latency", "1e-6")
    assert result.exit_code == 2
    assert "need simulate" in one_error_line(result)


def test_cost_command_is_registered():
    result = invoke("cost", "--preset", "mnist", "--batch", "1024", "--nodes", "1,2", "--method", "bicgstab", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["nodes"] for r in rows] == [1, 2]


MNIST_DIR = Path(os.environ.get("HESSFREE_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared/data/mnist"))


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="the real MNIST is not present")
def test_trains_on_the_real_mnist(tmp_path):
    path = tmp_path / "mnist.jsonl"
    result = invoke("train", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--hidden", "400", "--samples", "5000",
                    "--iterations", "3", "--batch-size", "1000", "--metrics", str(path))
    assert result.exit_code == 0, result.output
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert lines[0]["model"]["layers"] == [784, 400, 10] and lines[0]["data"]["n_test"] == 10_000
    losses = [l["loss"] for l in lines if l["kind"] == "iteration"]
    assert losses[-1] < 0.6 * losses[0] and lines[-1]["test_error"] < 0.3


@pytest.mark.parametrize("flag, expected", [("--no-backtracking", "last_iterate"), ("--backtracking", "walk_back")])
def test_backtracking_and_the_preconditioner_reach_the_trainer(tmp_path, flag, expected):
    metrics = tmp_path / "m.jsonl"
    result = invoke("train", "--iterations", "2", *SMALL, flag, "--preconditioner", "martens", "--metrics", str(metrics))
    assert result.exit_code == 0, result.output
    lines = [json.loads(l) for l in metrics.read_text().splitlines()]
    header, records = lines[0], [l for l in lines if "iteration" in l]
    assert json.dumps(header).count('"preconditioner": "martens"') == 1
    assert {r["choice"] for r in records} <= {expected, "no_descent_iterate", "no_candidate"}
    assert any(r["choice"] == expected for r in records)


def test_first_order_methods_refuse_backtracking():
    result = invoke("train", "--method", "sgd", "--epochs", "1", *SMALL_FIRST_ORDER, "--no-backtracking")
    assert result.exit_code == 2
    assert "backtracking does not apply to sgd" in one_error_line(result)


def test_gn_cg_solves_stop_at_five_cg_steps_unless_told(tmp_path):
    """gn-cg's default Krylov cap is 5 (benchmarks/studies/cgcap-*); --cg-max-iter lifts it."""
    def cg_iterations(*extra):
        metrics = tmp_path / f"m{len(extra)}.jsonl"
        result = invoke("train", "--iterations", "3", "--hidden", "16", "--batch-size", "200", "--seed", "1",
                        "--metrics", str(metrics), *extra)
        assert result.exit_code == 0, result.output
        return [l["cg_iterations"] for l in map(json.loads, metrics.read_text().splitlines()) if l["kind"] == "iteration"]

    assert max(cg_iterations()) == 5
    assert max(cg_iterations("--cg-max-iter", "40")) > 5


def test_gradient_sample_options():
    result = invoke("train", "--gradient-sample", "300", "--sample-growth", "1.3", "--iterations", "3")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.lstrip().startswith(("1/3", "2/3", "3/3"))]
    assert len(rows) == 3 and all(row.split()[1].startswith("~") for row in rows)  # the sample's objective
    assert "~: sample's loss" in result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 100
    assert "train accuracy -" in result.output  # the training set was not evaluated
    bad = invoke("train", "--sample-growth", "1.3", "--iterations", "2")
    assert bad.exit_code == 2 and "--sample-growth needs --gradient-sample" in bad.output
    first_order = invoke("train", "--method", "sgd", "--gradient-sample", "10")
    assert first_order.exit_code == 2 and "--gradient-sample does not apply to sgd" in first_order.output


def test_gradient_window_options():
    result = invoke("train", "--gradient-batch", "500", "--damping-min", "0.01", "--iterations", "4")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.lstrip()[:3] in ("1/4", "2/4", "3/4", "4/4")]
    # 1,347 samples: window 3 completes the first pass, window 4 is the last iteration
    assert [row[1].startswith("~") for row in rows] == [True, True, False, False]
    assert "~: sample's loss" in result.output and "train accuracy -" not in result.output
    both = invoke("train", "--gradient-batch", "500", "--gradient-sample", "300", "--iterations", "2")
    assert both.exit_code == 2 and "gradient_batch: expected 0 with a gradient sample" in both.output
    first_order = invoke("train", "--method", "msgd", "--gradient-batch", "10")
    assert first_order.exit_code == 2 and "--gradient-batch does not apply to msgd" in first_order.output
    negative = invoke("train", "--gradient-batch", "-5")
    assert negative.exit_code == 2 and "gradient_batch" in negative.output
