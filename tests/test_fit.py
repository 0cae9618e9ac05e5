"""``fit``: the library's one training entry point (callbacks, early stop, checkpoints,
resume, divergence as a result, several ranks, silence)."""

from __future__ import annotations

import numpy as np
import pytest

from hessfree.comm import run_threads
from hessfree.data import ShardMode, load_dataset
from hessfree.errors import CheckpointError
from hessfree.models import MLP
from hessfree.train import Callback, Checkpointing, Status, TrainConfig, fit


def small(method="gn-cg", **overrides):
    return TrainConfig(method=method, iterations=6, epochs=3, batch_size=300, cg_max_iter=20, seed=2, **overrides)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def model():
    return MLP([64, 16, 10])


class Recorder(Callback):
    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_start(self, info):
        self.events.append(("start", info.start, info.total))

    def on_iteration(self, record, state):
        self.events.append(("iteration", record.iteration))
        return self.stop_at is not None and state.iteration >= self.stop_at

    def on_end(self, result):
        self.events.append(("end", result.status))


@pytest.mark.parametrize("method", ["gn-cg", "msgd"])
def test_fit_calls_the_callbacks_and_returns_the_history(digits, method, capsys):
    hook = Recorder()
    result = fit(model(), digits, small(method), callbacks=[hook])
    total = 6 if method == "gn-cg" else 3
    assert result.status is Status.COMPLETED and len(result.history) == total == result.state.iteration
    assert hook.events[0] == ("start", 0, total) and hook.events[-1] == ("end", Status.COMPLETED)
    assert [e[1] for e in hook.events if e[0] == "iteration"] == [r.iteration for r in result.history]
    assert result.summary()["status"] == "ok" and result.summary()["loss"] == result.last.loss
    assert capsys.readouterr() == ("", "")  # the library never prints


def test_a_callback_stops_the_run_early(digits):
    result = fit(model(), digits, small(), callbacks=[Recorder(stop_at=2)])
    assert result.status is Status.STOPPED and result.state.iteration == 2 and len(result.history) == 2


def test_checkpoint_and_resume_continue_the_same_trajectory(digits, tmp_path):
    whole = fit(model(), digits, small()).history
    saves = Checkpointing(directory=tmp_path, every=5)
    first = fit(model(), digits, small(), callbacks=[Recorder(stop_at=3)], checkpoints=saves)
    assert first.status is Status.STOPPED  # a stop writes a checkpoint even between the 5s
    hook = Recorder()
    rest = fit(model(), digits, small(), checkpoints=saves, resume=True, callbacks=[hook])
    assert hook.events[0] == ("start", 3, 6) and rest.state.iteration == 6
    assert [r.loss for r in first.history + rest.history] == [r.loss for r in whole]
    np.testing.assert_array_equal(rest.state.theta, fit(model(), digits, small()).state.theta)


def test_resume_refuses_another_configuration(digits, tmp_path):
    saves = Checkpointing(directory=tmp_path)
    fit(model(), digits, small(), checkpoints=saves)
    with pytest.raises(CheckpointError, match="damping"):
        fit(model(), digits, small(damping=3.0), checkpoints=saves, resume=True)


def test_divergence_is_a_result_not_an_exception(digits):
    # Armijo with c ≈ 1 and one trial rejects every step: two rejections in a row diverge
    result = fit(model(), digits, small(armijo_c=0.999999, max_line_search=1, max_rejected=2))
    assert result.status is Status.DIVERGED and "diverged" in result.message


def test_rank_zero_decides_the_stop_for_every_rank():
    def work(comm):
        data = load_dataset("digits", rank=comm.rank, size=comm.size, shard=ShardMode.STRIDED)
        hook = Recorder(stop_at=2)
        result = fit(model(), data, small(), comm, callbacks=[hook])
        return result.state.iteration, result.status, hook.events

    (it0, status0, events0), (it1, status1, events1) = run_threads(work, 2)
    assert it0 == it1 == 2 and status0 is status1 is Status.STOPPED
    assert events0 and events1 == []  # callbacks run on rank 0 only
