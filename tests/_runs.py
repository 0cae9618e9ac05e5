"""Helpers the trainer tests share: a whole run from a ``hessfree train`` settings dict
(serial or on a given communicator), and the records of a run interrupted and resumed
through the CLI beside those of the same run uninterrupted."""

from __future__ import annotations

import json

from hessfree.comm import SerialComm
from hessfree.train import fit, make_run_config
from hessfree.train.run import build

#: the fields of a metrics line that are not the trajectory's (wall times, the line kind)
TIMES = frozenset({"time_s", "time_gradient_s", "time_solve_s", "time_line_search_s", "kind"})


def fitted(config: dict, comm=None):
    """(records, data, model) of a run of ``config`` (no kernel warm-up)."""
    run_config = make_run_config(config)
    comm = comm if comm is not None else SerialComm()
    data, model = build(run_config, comm)
    return list(fit(model, data, run_config.train, comm, warm_up=False).history), data, model


def records_of(config: dict, comm=None) -> list:
    """The iteration records of a run of ``config``."""
    return fitted(config, comm)[0]


def resumed_and_uninterrupted(tmp_path, flags: list[str], iterations: int, stop: int, drop=frozenset()) -> tuple[list, list]:
    """(uninterrupted, resumed) metrics records of ``hessfree train FLAGS``: one run of
    ``iterations``, and one stopped after ``stop`` and resumed from its checkpoint, both
    without the wall times and the ``drop`` fields."""
    from click.testing import CliRunner

    from hessfree.cli.main import main

    def train(directory, length, *extra):
        args = ["train", *flags, "--iterations", str(length), "--checkpoint-dir", str(directory), "--checkpoint-every", "1",
                "--metrics", str(directory / "m.jsonl"), "--quiet", *extra]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output

    def records(directory):
        lines = [json.loads(line) for line in (directory / "m.jsonl").read_text().splitlines()]
        return [{k: v for k, v in d.items() if k not in TIMES | drop} for d in lines if d["kind"] == "iteration"]

    whole, part = tmp_path / "whole", tmp_path / "part"
    train(whole, iterations)
    train(part, stop)
    train(part, iterations, "--resume")
    return records(whole), records(part)


def mpi_records(tmp_path, config: dict, ranks: int = 2) -> list[dict]:
    """Per rank, {parallel layout: records as dicts} of ``config`` run data- and
    model-parallel on ``ranks`` MPI ranks (``tests/mpi/train_sampled.py``)."""
    from mpi.launch import run_mpi

    run = run_mpi(ranks, "train_sampled.py", str(tmp_path), json.dumps(config), limit=240)
    assert run.returncode == 0, run.output[-3000:]
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(ranks)]
