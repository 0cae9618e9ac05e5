"""Model-parallel training (``--parallel model``): every method follows the serial
trajectory to rounding on threads and under MPI; checkpoints and model files hold whole
vectors (a checkpoint of either layout resumes in the other); the CLI runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hessfree.cli.main import main
from hessfree.comm import SerialComm, run_threads
from hessfree.errors import ConfigError
from hessfree.modelfile import load_model
from hessfree.train import fit, make_run_config
from hessfree.train.layout import ModelParallel, Parallel
from hessfree.train.run import build, run
from mpi.launch import run_mpi
from train_cases import METHODS, case_config


def records(config: dict, comm) -> list:
    run_config = make_run_config(config)
    data, model = build(run_config, comm)
    return list(fit(model, data, run_config.train, comm).history)


@pytest.fixture(scope="module")
def serial_runs():
    return {m: records(case_config(m), SerialComm()) for m in METHODS}


def losses(history) -> list[float]:
    return [r["loss"] if isinstance(r, dict) else r.loss for r in history]


@pytest.mark.parametrize("ranks", [1, 3])
@pytest.mark.parametrize("method", METHODS)
def test_model_parallel_threads_give_the_serial_losses(serial_runs, method, ranks):
    config = case_config(method, parallel="model")
    per_rank = run_threads(lambda comm: records(config, comm), ranks) if ranks > 1 else [records(config, SerialComm())]
    expected = serial_runs[method]
    for history in per_rank:
        assert losses(history) == pytest.approx(losses(expected), rel=1e-10, abs=0)
        assert [r.train_error for r in history] == [r.train_error for r in expected]
        assert [r.test_error for r in history] == [r.test_error for r in expected]
        assert [r.iteration for r in history] == [r.iteration for r in expected]
    assert all(losses(h) == losses(per_rank[0]) for h in per_rank)  # bitwise alike on every rank
    phases = per_rank[0][-1].comm_phases.total
    assert phases.allreduce == 0 and phases.allgather > 0  # nothing data-parallel was reduced


def test_model_parallel_is_the_layout_the_trainer_sees():
    config = make_run_config(case_config("gn-cg", parallel="model"))
    assert config.parallel is Parallel.MODEL
    data, model = build(config, SerialComm())
    from hessfree.train import make_trainer

    trainer = make_trainer(model, data, config.train, SerialComm())
    assert isinstance(trainer.layout, ModelParallel)
    assert trainer.layout.n_params == model.n_params_total == data.n_features * 24 + 24 + 24 * 10 + 10


@pytest.mark.mpi
def test_model_parallel_under_mpi_gives_the_serial_losses(serial_runs, tmp_path):
    run = run_mpi(2, "train_methods.py", str(tmp_path), "model", limit=400)
    assert run.returncode == 0, run.output[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for method in METHODS:
        for result in ranks:
            assert losses(result[method]) == pytest.approx(losses(serial_runs[method]), rel=1e-10, abs=0), method
        assert losses(ranks[0][method]) == losses(ranks[1][method])


@pytest.mark.parametrize("method", ["gn-cg", "adam"])
def test_the_cli_trains_model_parallel_on_three_thread_ranks(serial_runs, method, tmp_path):
    config = case_config(method)
    hf = method == "gn-cg"
    args = ["train", "--method", method, "--hidden", config["hidden"], "--batch-size", str(config["batch_size"]),
            "--seed", str(config["seed"]), "--parallel", "model", "--comm", "threads", "--ranks", "3",
            "--metrics", str(tmp_path / "m.jsonl")]
    args += ["--iterations", "3", "--cg-max-iter", str(config["cg_max_iter"])] if hf else ["--epochs", "2", "--lr", str(config["lr"])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "3 ranks (threads, model-parallel)" in result.stdout
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    got = [line["loss"] for line in lines if "loss" in line and "iteration" in line]
    assert got == pytest.approx(losses(serial_runs[method]), rel=1e-10, abs=0)


@pytest.mark.mpi
@pytest.mark.parametrize("method", ["gn-cg", "sgd"])
def test_the_cli_trains_model_parallel_under_mpirun(serial_runs, method, tmp_path):
    config = case_config(method)
    args = ["train", "--method", method, "--hidden", config["hidden"], "--batch-size", str(config["batch_size"]),
            "--seed", str(config["seed"]), "--parallel", "model", "--metrics", str(tmp_path / "m.jsonl")]
    args += ["--iterations", "3", "--cg-max-iter", "30"] if method == "gn-cg" else ["--epochs", "2", "--lr", "0.2"]
    run = run_mpi(2, "train_cli.py", *args, limit=240)
    assert run.returncode == 0, run.output[-3000:]
    assert "2 ranks (mpi, model-parallel)" in run.output
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    got = [line["loss"] for line in lines if "loss" in line and "iteration" in line]
    assert got == pytest.approx(losses(serial_runs[method]), rel=1e-10, abs=0)


def test_more_ranks_than_units_exits_2_naming_the_layer():
    result = CliRunner().invoke(main, ["train", "--hidden", "4", "--parallel", "model", "--comm", "threads", "--ranks", "5",
                                       "--iterations", "1"])
    assert result.exit_code == 2, result.output
    assert "layer 1 of [64, 4, 10] has only 4 units; use at most 4 ranks" in result.stderr
    with pytest.raises(ConfigError):
        run(make_run_config(dict(case_config("sgd", hidden="2", parallel="model"), comm="threads", ranks=3)))


# ------------------------------------------------------------------ whole vectors on disk
def _run(method: str, total: int, parallel: str, ranks: int, **extra):
    length = dict(iterations=total) if method != "msgd" else dict(epochs=total)
    config = dict(case_config(method, **length), parallel=parallel, **extra)
    if ranks > 1:
        config.update(comm="threads", ranks=ranks)
    return run(make_run_config(config))


@pytest.mark.parametrize("method", ["gn-cg", "msgd"])
def test_checkpoints_hold_whole_vectors_and_resume_in_the_other_layout(method, tmp_path):
    whole = _run(method, 4, "data", 1)
    first = _run(method, 2, "model", 3, checkpoint_dir=str(tmp_path / "a"))
    resumed = _run(method, 4, "data", 1, checkpoint_dir=str(tmp_path / "a"), resume=True)
    assert losses(first.history) + losses(resumed.history) == pytest.approx(losses(whole.history), rel=1e-10, abs=0)
    first = _run(method, 2, "data", 2, checkpoint_dir=str(tmp_path / "b"))
    resumed = _run(method, 4, "model", 2, checkpoint_dir=str(tmp_path / "b"), resume=True)
    assert losses(first.history) + losses(resumed.history) == pytest.approx(losses(whole.history), rel=1e-10, abs=0)
    assert resumed.state.theta.size < whole.state.theta.size  # rank 0's shard


def test_the_model_file_of_a_model_parallel_run_is_the_whole_network(tmp_path):
    serial = _run("gn-cg", 2, "data", 1, save_model=str(tmp_path / "s.hfm"))
    sharded = _run("gn-cg", 2, "model", 3, save_model=str(tmp_path / "m.hfm"))
    a, b = load_model(tmp_path / "s.hfm"), load_model(tmp_path / "m.hfm")
    assert b.model.layers == a.model.layers and b.theta.size == a.theta.size == serial.state.theta.size
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-9, atol=1e-12)
    assert sharded.saved_model == str(tmp_path / "m.hfm")


def test_weight_decay_and_the_martens_preconditioner_run_model_parallel():
    options = dict(weight_decay=1e-3, preconditioner="martens")
    want = losses(_run("gn-cg", 3, "data", 1, **options).history)
    assert losses(_run("gn-cg", 3, "model", 3, **options).history) == pytest.approx(want, rel=1e-10, abs=0)
    want = losses(_run("msgd", 2, "data", 1, weight_decay=1e-3).history)
    assert losses(_run("msgd", 2, "model", 2, weight_decay=1e-3).history) == pytest.approx(want, rel=1e-10, abs=0)


def test_a_simulated_cluster_meters_and_charges_the_model_exchanges():
    plain = _run("gn-cg", 2, "model", 2)
    simulated = _run("gn-cg", 2, "model", 2, simulate="omni-path")
    assert losses(simulated.history) == losses(plain.history)
    assert [r.comm_phases for r in simulated.history] == [r.comm_phases for r in plain.history]
    assert all(r.sim_time_s is not None and r.sim_time_s > 0 for r in simulated.history)


def test_a_checkpoint_written_before_the_block_collectives_still_resumes():
    """Counts stored without allgather / reduce_scatter (older checkpoints) hold none of them."""
    from hessfree.train import make_trainer
    from hessfree.train.fit import _decoder

    config = make_run_config(case_config("gn-cg"))
    data, model = build(config, SerialComm())
    trainer = make_trainer(model, data, config.train, SerialComm())
    state = trainer.initial_state()
    arrays, scalars = trainer.state_payload(state)
    old = json.loads(json.dumps(scalars))
    for row in old["comm"].values():
        del row["allgather"], row["reduce_scatter"]
    decoded = _decoder(trainer, state)(arrays, old)
    assert decoded.comm == state.comm and np.array_equal(decoded.theta, state.theta)
