"""The experiment runner: declared as data, tuned by a fixed rule, resumable, replayed
simulated time equal to a simulated run's clock, bad files refused naming the key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from hessfree.cli.main import main
from hessfree.cost import NodeSpec
from hessfree.errors import ConfigError
from hessfree.experiments import Cluster, Experiment, Runner
from hessfree.experiments.replay import cost_model, replay
from hessfree.experiments.runner import analyse, read_run
from hessfree.methods import Method
from hessfree.train import make_run_config
from hessfree.train.run import run


def tiny(**overrides) -> dict:
    data = dict(
        name="tiny", description="digits, two methods", targets=[0.2, 0.05], tuning_target=0.05,
        tuning_axis="iterations", tuning_seeds=[100, 101], seeds=[0, 1], nodes=[4], networks=["omni-path"],
        base=dict(dataset="digits", hidden="12"),
        methods=[dict(method="gn-cg", fixed=dict(iterations=4, batch_size=300), grid=dict(damping=[0.1, 30.0])),
                 dict(method="msgd", fixed=dict(epochs=2), grid=dict(lr=[0.003, 0.1]))],
    )
    data.update(overrides)
    return data


def test_a_tiny_experiment_runs_tunes_and_measures_every_axis(tmp_path):
    events = []
    summary = Runner(Experiment.from_mapping(tiny()), tmp_path, on_run=events.append).run_all()
    assert len(events) == 2 * 2 * 2 + 2 * 2 and not any(e.skipped for e in events)
    assert {r["phase"] for r in summary["runs"]} == {"report"} and len(summary["runs"]) == 4
    row = summary["runs"][0]["targets"]["0.2"]
    assert set(row) == {"reached", "iterations", "epochs", "curvature_products", "collectives", "wall_s", "sim_4_omni-path"}
    # λ = 30 takes many more iterations than λ = 0.1 on digits; lr 0.003 is far too small
    assert summary["tuning"]["gn-cg"]["chosen"] == {"damping": 0.1}
    assert summary["tuning"]["msgd"]["chosen"] == {"lr": 0.1}
    stored = json.loads((tmp_path / "summary.json").read_text())  # strict JSON: inf is null
    assert stored["tuning"]["msgd"]["points"][0]["median"] is None


def test_the_tuning_rule_takes_the_smallest_median_then_breaks_ties(tmp_path, monkeypatch):
    exp = Experiment.from_mapping(tiny(tuning_seeds=[7, 8, 9], methods=[dict(method="gn-cg", grid=dict(damping=[1.0, 2.0, 3.0]))]))
    runner = Runner(exp, tmp_path)
    # criterion per (damping, seed): damping 2 has the best median (2) despite one failure
    table = {1.0: [3, 3, 1], 2.0: [2, math.inf, 1], 3.0: [math.inf, math.inf, math.inf]}

    def fake(spec):
        value = table[spec.settings["damping"]][spec.seed - 7]
        return dict(targets={"0.05": {"iterations": value}}, final=dict(train_error=0.1, loss=1.0))

    monkeypatch.setattr(runner, "execute", fake)
    chosen, record = runner.tune(exp.methods[0])
    assert chosen == {"damping": 2.0} and [p["median"] for p in record["points"]] == [3, 2, math.inf]
    # nobody reaches the target: the smaller final training error decides
    table = {1.0: [math.inf] * 3, 2.0: [math.inf] * 3, 3.0: [math.inf] * 3}
    errors = {1.0: 0.3, 2.0: 0.2, 3.0: 0.1}

    def unreached(spec):
        return dict(targets={"0.05": {"iterations": math.inf}}, final=dict(train_error=errors[spec.settings["damping"]], loss=1.0))

    monkeypatch.setattr(runner, "execute", unreached)
    assert runner.tune(exp.methods[0])[0] == {"damping": 3.0}


def test_an_interrupted_experiment_resumes_without_redoing_finished_runs(tmp_path):
    exp = Experiment.from_mapping(tiny(methods=[dict(method="gn-cg", fixed=dict(iterations=3))], seeds=[0, 1, 2]))
    Runner(exp, tmp_path).run_all()
    files = sorted((tmp_path / "runs").glob("*.jsonl"))
    assert len(files) == 3
    cut = files[1]  # as if killed during its last iteration: no result line, a torn last line
    lines = cut.read_text().splitlines()
    cut.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][: len(lines[-2]) // 2])
    untouched = files[0].stat().st_mtime_ns
    events = []
    summary = Runner(exp, tmp_path, on_run=events.append).run_all()
    assert [e.skipped for e in events] == [True, False, True]
    assert files[0].stat().st_mtime_ns == untouched and len(summary["runs"]) == 3
    assert read_run(cut)[2] is not None


@pytest.mark.parametrize("method, extra", [("gn-cg", {}), ("gn-cg", dict(gradient_batch=500, iterations=5)), ("msgd", {})])
def test_replayed_time_equals_a_simulated_runs_clock(tmp_path, method, extra):
    """Compute made (nearly) free on both sides (compute_scale 1e-6, an infinitely fast node)
    on a slow network: what is left is the charged collectives, which the replay must
    reproduce from the counts (the scaled compute stays below 1e-4 of them); also with
    gradient windows, whose iterations evaluate the data or not."""
    metrics = tmp_path / "sim.jsonl"
    values = dict(method=method, hidden="12", iterations=3, epochs=2, batch_size=300 if method == "gn-cg" else 50,
                  comm="threads", ranks=4, simulate="ethernet-10g", sim_compute_scale=1e-6, metrics=str(metrics), quiet=True)
    values.update(extra)
    run(make_run_config(values))
    header, records, _ = read_run(metrics)
    cluster = Cluster(4, "ethernet-10g", node=NodeSpec(flops=1e30, itemsize=8))
    model = cost_model(cluster, header["model"]["layers"], header["data"]["n_train"], header["data"]["n_test"], 8)
    replayed = replay(records, Method(method), 300 if method == "gn-cg" else 50, model, 4)
    simulated = [r["sim_time_s"] for r in records]
    assert replayed == pytest.approx(simulated, rel=1e-3)


def test_analyse_reads_a_run_as_the_runner_does(tmp_path):
    exp = Experiment.from_mapping(tiny())
    summary = Runner(exp, tmp_path).run_all()
    r = summary["runs"][0]
    path = tmp_path / "runs" / f"{r['key']}.jsonl"
    from hessfree.experiments.runner import RunSpec

    again = analyse(exp, RunSpec(exp.methods[0], r["settings"], r["seed"], "report"), *read_run(path))
    assert again["targets"]["0.2"]["iterations"] == r["targets"]["0.2"]["iterations"]


@pytest.mark.parametrize(
    "change, fragment",
    [
        (dict(colour="red"), "colour: unknown key"),
        (dict(targets="0.1"), "targets: expected a list"),
        (dict(methods=[dict(method="newton")]), "methods.method: expected one of"),
        (dict(methods=[dict(method="gn-cg", grid=dict(damping=[]))]), "methods.grid.damping"),
        (dict(methods=[dict(method="gn-cg", fixed=dict(dampin=1.0))]), "dampin: unknown key"),
        (dict(methods=[dict(method="gn-cg", fixed=dict(damping="big"))]), "damping: expected a number"),
        (dict(seeds=[100]), "seeds: the reported seeds must be fresh"),
        (dict(tuning_axis="speed"), "tuning_axis: expected one of"),
        (dict(networks=["carrier-pigeon"]), "networks"),
        (dict(quick=dict(seeds=0)), "quick.seeds"),
    ],
)
def test_bad_experiments_are_refused_naming_the_key(change, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        Experiment.from_mapping(tiny(**change))


def test_the_cli_refuses_a_bad_file_with_one_line_and_exit_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\ndescription = "y"\nseedz = [1]\n[[methods]]\nmethod = "gn-cg"\n')
    result = CliRunner().invoke(main, ["experiment", "run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {path}: seedz: unknown key; known keys: " + result.stderr.split("known keys: ")[1].strip()]


def test_the_cli_runs_an_experiment_file_and_reports(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\ndescription = "digits"\ntargets = [0.3]\ntuning_target = 0.3\ntuning_axis = "iterations"\n'
        'seeds = [0]\nnodes = [2]\nnetworks = ["omni-path"]\n[base]\ndataset = "digits"\nhidden = "8"\n'
        '[[methods]]\nmethod = "gn-cg"\nfixed = { iterations = 3 }\n'
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["experiment", "run", str(path), "--out", str(out), "--no-report"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["experiment", "report", str(out)])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "training error ≤ 0.3" in report and "| gn-cg | " in report


def test_plans_of_one_method_at_several_batches_form_a_series():
    from hessfree.experiments.figures import batch_series

    def plan(method, batch, label):
        return dict(method=method, fixed={"batch_size": batch} if batch else {}, grid={}, label=label)

    def runs(label, batch, seeds=2):
        return [dict(method=label, phase="report", batch=batch, seed=s) for s in range(seeds)]

    summary = dict(
        experiment=dict(methods=[plan("gn-cg", 1000, "gn-cg-b1000"), plan("gn-cg", 5000, "gn-cg-b5000"),
                                 plan("sgd", 64, "sgd-b64"), plan("adam", None, "adam")]),
        runs=runs("gn-cg-b5000", 3000) + runs("gn-cg-b1000", 1000) + runs("sgd-b64", 64) + runs("adam", 64)
        + [dict(method="gn-cg-b1000", phase="tune", batch=1000, seed=100)],
    )
    series = batch_series(summary)
    assert list(series) == ["gn-cg"]  # sgd has one batch, adam none fixed
    # ordered by the batch actually used (clipped to the training set), tuning runs left out
    assert [(b, len(rs)) for b, rs in series["gn-cg"]] == [(1000, 2), (3000, 2)]


def test_committed_experiments_pin_gn_cg_at_the_cap_they_ran_with():
    """The built-in experiments' results were committed when gn-cg's Krylov cap was 250: they
    pin it for gn-cg (so they reproduce) and leave every other method's cap alone (Bi-CG-STAB
    keeps its 50; fig2 states its own 10)."""
    from hessfree.experiments.builtin import BUILTIN

    for experiment in BUILTIN.values():
        for plan in experiment.methods:
            settings = {**experiment.base, **plan.fixed}
            if plan.method is Method.GN_CG:
                assert settings.get("cg_max_iter") == 250, (experiment.name, plan.label)
            elif experiment.name != "fig2":
                assert "cg_max_iter" not in settings, (experiment.name, plan.label)


STUDIES = sorted((Path(__file__).parent.parent / "benchmarks" / "studies").glob("*.toml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_study_file_builds_every_run_it_declares(path):
    """The studies in benchmarks/studies are the project's pre-registered tests: each loads,
    and every grid point of every method makes a valid run configuration. Those written
    while gn-cg's cap was 250 pin it, so that they reproduce the committed results."""
    experiment = Experiment.from_toml(path)
    for plan in experiment.methods:
        for point in plan.points() or [{}]:
            config = make_run_config({**experiment.base, "method": plan.method.value, **plan.fixed, **point})
            assert config.train.method is plan.method
            if plan.method is Method.GN_CG and path.stem.startswith(("backtracking-", "batch-")):
                assert config.train.krylov_max_iter == 250, (path.stem, plan.name)
