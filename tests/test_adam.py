"""Adam and AdamW: the update against a hand-written reference, coupled vs decoupled weight
decay, skipped non-finite updates, ranks, learning, cost model, checkpoints, config, CLI."""

from __future__ import annotations

import json
import math

import attrs
import numpy as np
import pytest
from click.testing import CliRunner

from hessfree.cli.main import main
from hessfree.comm import SerialComm, run_threads
from hessfree.cost import CostMethod, CostModel, Network, NodeSpec
from hessfree.data import load_dataset
from hessfree.data.dataset import Dataset
from hessfree.errors import ConfigError
from hessfree.methods import Family, Method, Update
from hessfree.models import MLP
from hessfree.train import Callback, Checkpointing, FirstOrderTrainer, Status, TrainConfig, fit, make_run_config, make_trainer
from hessfree.train.batches import epoch_permutation
from hessfree.train.run import build
from stub_rows import Rows


# ------------------------------------------------------------------ an exactly quadratic model


class QuadraticModel:
    """ℓᵢ(θ) = ½(θ − cᵢ)ᵀA(θ − cᵢ), cᵢ the i-th row of X, in the given dtype; optionally a
    NaN gradient on the loss_grad calls listed in ``poison`` (0-based)."""

    def __init__(self, A: np.ndarray, dtype, poison=()):
        self.dtype = np.dtype(dtype)
        self.A = A.astype(self.dtype)
        self.n_params = A.shape[0]
        self.layers = (self.n_params,)
        self.poison, self.calls = set(poison), 0

    def init_params(self, seed) -> np.ndarray:
        return (np.random.default_rng(seed).standard_normal(self.n_params) * 3.0).astype(self.dtype)

    def batch(self, X, y=None):
        return Rows(np.asarray(X), np.asarray(y))

    def loss_grad(self, theta, X, y=None):
        X = X.X if isinstance(X, Rows) else np.asarray(X)
        R = theta - X
        AR = R @ self.A
        loss, grad = 0.5 * float(np.sum(AR * R)), AR.sum(axis=0)
        call, self.calls = self.calls, self.calls + 1
        return (math.nan, grad * np.nan) if call in self.poison else (loss, grad)

    def evaluate(self, theta, X, y=None):
        X = X.X if isinstance(X, Rows) else np.asarray(X)
        R = theta - X
        return 0.5 * float(np.sum((R @ self.A) * R)), 0


def quadratic(dtype, poison=()):
    rng = np.random.default_rng(7)
    d, n = 6, 120
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = (Q * np.logspace(-1, 1, d)) @ Q.T
    A = (A + A.T) / 2
    X = rng.standard_normal((n, d)).astype(dtype)
    return QuadraticModel(A, dtype, poison), Dataset("quadratic", X, np.zeros(n, dtype=np.int64), 1)


# ------------------------------------------------------------------ the reference
def reference(model, data, config: TrainConfig, epochs: int, skip=()) -> dict:
    """The papers' formulas, written out: Kingma & Ba's Adam with g = ∇f + μθ (coupled), or
    Loshchilov & Hutter's AdamW θ ← θ − η(m̂/(√v̂+ε) + μθ) with g = ∇f (decoupled), on the
    trainer's mini-batches; the update slots in ``skip`` (0-based, counted over the run)
    are skipped as the trainer skips a non-finite gradient (t does not advance)."""
    decoupled = config.method.spec.update is Update.ADAMW
    lr, b1, b2, eps, wd = config.lr, config.beta1, config.beta2, config.adam_eps, config.weight_decay
    theta = model.init_params(config.seed)
    m, v, t, slot = np.zeros_like(theta), np.zeros_like(theta), 0, 0
    n = data.n_train
    b = min(config.global_batch, n)
    for epoch in range(epochs):
        perm = epoch_permutation(config.seed, epoch, n)
        for u in range(max(1, n // b)):
            slot += 1
            if slot - 1 in skip:
                continue
            idx = perm[u * b : (u + 1) * b]
            g = model.loss_grad(theta, data.X_train[idx], data.y_train[idx])[1] / b
            if wd and not decoupled:
                g = g + wd * theta
            t += 1
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            if decoupled:
                theta = theta - lr * (m_hat / (np.sqrt(v_hat) + eps) + wd * theta)
            else:
                theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return dict(theta=theta, m=m, v=v, t=t)


def train(model, data, config: TrainConfig, comm=None):
    trainer = make_trainer(model, data, config, comm)
    state = trainer.initial_state()
    for new, _ in trainer.run(state, config.epochs):
        state = new
    return state


TOL = {np.float64: dict(rtol=1e-12, atol=1e-14), np.float32: dict(rtol=2e-5, atol=2e-6)}


def assert_matches(state, ref, dtype):
    assert state.theta.dtype == state.velocity.dtype == state.second_moment.dtype == np.dtype(dtype)
    np.testing.assert_allclose(state.theta, ref["theta"], **TOL[dtype])
    np.testing.assert_allclose(state.velocity, ref["m"], **TOL[dtype])
    np.testing.assert_allclose(state.second_moment, ref["v"], **TOL[dtype])
    assert state.applied == ref["t"]


def quadratic_config(method, **overrides):
    options = dict(method=method, epochs=3, batch_size=20, lr=0.05, beta1=0.8, beta2=0.99, adam_eps=1e-6, seed=1)
    return TrainConfig(**{**options, **overrides})


# ------------------------------------------------------------------ the method table
@pytest.mark.parametrize("name, rule", [("adam", Update.ADAM), ("adamw", Update.ADAMW)])
def test_adam_methods_are_first_order_entries_of_the_table(name, rule):
    spec = Method(name).spec
    assert spec.family is Family.FIRST_ORDER and spec.update is rule and not spec.is_hessian_free
    assert spec.default_batch == Method.SGD.spec.default_batch == 64  # the same mini-batch as SGD
    config = TrainConfig(method=name, epochs=7)
    assert config.global_batch == 64 and config.run_length == 7
    assert (config.beta1, config.beta2, config.adam_eps) == (0.9, 0.999, 1e-8)
    assert CostMethod(name).spec is spec and not CostMethod(name).is_hessian_free


# ------------------------------------------------------------------ the update rule
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("method", ["adam", "adamw"])
def test_three_epochs_match_the_reference_formulas(method, weight_decay, dtype):
    model, data = quadratic(dtype)
    config = quadratic_config(method, weight_decay=weight_decay)
    state = train(model, data, config)
    ref = reference(quadratic(dtype)[0], data, config, 3)
    assert state.updates == state.applied == 18 and state.iteration == 3
    assert_matches(state, ref, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weight_decay_coupled_for_adam_decoupled_for_adamw(dtype):
    """Without decay the two are bitwise one method; with it each follows its own formula
    and not the other's (the difference is far above the tolerance)."""
    model, data = quadratic(dtype)
    plain = {m: train(model, data, quadratic_config(m)) for m in ("adam", "adamw")}
    for name in ("theta", "velocity", "second_moment"):
        np.testing.assert_array_equal(getattr(plain["adam"], name), getattr(plain["adamw"], name))
    decayed = {m: train(model, data, quadratic_config(m, weight_decay=0.05)) for m in ("adam", "adamw")}
    refs = {m: reference(model, data, quadratic_config(m, weight_decay=0.05), 3) for m in ("adam", "adamw")}
    for method, other in (("adam", "adamw"), ("adamw", "adam")):
        assert_matches(decayed[method], refs[method], dtype)
        gap = np.max(np.abs(decayed[method].theta - refs[other]["theta"]))
        assert gap > 1e-3
    # AdamW's decay is on θ, not in the gradient: its moments are those of ∇f alone
    assert not np.allclose(decayed["adam"].second_moment, decayed["adamw"].second_moment, rtol=1e-3)


def test_the_first_step_is_bias_corrected():
    """With one full-batch update m̂ = g and v̂ = g², so every coordinate moves by
    η·|g|/(|g| + ε) ≈ η against the gradient (without the corrections: η(1−β₁)/√(1−β₂))."""
    model, data = quadratic(np.float64)
    config = TrainConfig(method="adam", epochs=1, batch_size=data.n_train, lr=0.01)
    trainer = FirstOrderTrainer(model, data, config, SerialComm())
    state = trainer.initial_state()
    g = model.loss_grad(state.theta, data.X_train)[1] / data.n_train
    new, _ = trainer.step(state)
    step = new.theta - state.theta
    np.testing.assert_allclose(step, -0.01 * g / (np.abs(g) + 1e-8), rtol=1e-12)
    np.testing.assert_allclose(np.abs(step), 0.01, rtol=1e-6)
    assert new.applied == new.updates == 1


@pytest.mark.parametrize("method", ["adam", "adamw"])
def test_a_non_finite_gradient_skips_the_update_and_adams_step_count(method):
    """Update slot 4 of 18 is NaN: θ, m, v stay, t does not advance (the reference skips the
    same slot); the epoch still counts its slots, as for SGD."""
    model, data = quadratic(np.float64, poison=(4,))
    config = quadratic_config(method, weight_decay=0.05)
    state = train(model, data, config)
    assert state.updates == 18 and state.applied == 17 and state.rejected == 0
    ref = reference(quadratic(np.float64)[0], data, config, 3, skip=(4,))
    assert_matches(state, ref, np.float64)
    assert np.all(np.isfinite(state.theta))


def test_real_model_matches_the_reference():
    """The same on an MLP (gradients recomputed with ``model.loss_grad``), float32 AdamW."""
    data = load_dataset("digits", dtype=np.float32, samples=400)
    model = MLP([64, 12, 10], dtype="float32")
    config = TrainConfig(method="adamw", epochs=2, batch_size=50, lr=0.01, weight_decay=0.01, seed=4)
    state = train(model, data, config)
    assert_matches(state, reference(model, data, config, 2), np.float32)


def test_sgd_and_msgd_states_carry_no_second_moment():
    model, data = quadratic(np.float64)
    for method in ("sgd", "msgd"):
        state = train(model, data, quadratic_config(method))
        assert state.second_moment is None and state.applied == state.updates == 18


# ------------------------------------------------------------------ ranks, learning
def run_records(config: dict, comm):
    run_config = make_run_config(config)
    data, model = build(run_config, comm)
    result = fit(model, data, run_config.train, comm, warm_up=False)
    return [r.loss for r in result.history], result.state


def digits_case(method, **overrides):
    options = dict(method=method, hidden="24", epochs=3, batch_size=50, lr=0.01, weight_decay=1e-3, seed=3, quiet=True)
    return {**options, **overrides}


@pytest.mark.parametrize("method", ["adam", "adamw"])
def test_two_thread_ranks_give_the_serial_trajectory(method):
    losses, state = run_records(digits_case(method), SerialComm())
    for rank_losses, rank_state in run_threads(lambda comm: run_records(digits_case(method), comm), 2):
        assert rank_losses == pytest.approx(losses, rel=1e-10)
        np.testing.assert_allclose(rank_state.theta, state.theta, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(rank_state.second_moment, state.second_moment, rtol=1e-9, atol=1e-20)
        assert rank_state.applied == state.applied


def test_adam_learns_digits():
    losses, _ = run_records(digits_case("adam", epochs=4, weight_decay=0.0), SerialComm())
    run_config = make_run_config(digits_case("adam"))
    data, model = build(run_config, SerialComm())
    start = model.loss(model.init_params(3), data.X_train, data.y_train) / data.n_train
    assert losses[-1] < 0.15 * start
    assert all(b < a for a, b in zip(losses, losses[1:]))


# ------------------------------------------------------------------ the cost model
def metered_and_predicted(comm, method):
    data = load_dataset("synthetic", n_features=6, n_classes=3, samples=90, rank=comm.rank, size=comm.size, validation=0.2, seed=1)
    model = MLP([6, 5, 3])
    config = TrainConfig(method=method, epochs=2, batch_size=24, lr=0.01, weight_decay=1e-3)
    trainer = make_trainer(model, data, config, comm)
    cost = CostModel(layers=model.layers, samples=data.n_train_global, test_samples=data.n_test_global,
                     node=NodeSpec(flops=1e9, itemsize=8), network=Network(latency=1e-6, inverse_bandwidth=1e-9))
    state, out = trainer.initial_state(), []
    while state.iteration < config.epochs:
        before = comm.counts()
        state, _ = trainer.step(state)
        metered = comm.counts() - before
        out.append((cost.sgd_counts(cost.updates_per_epoch(24), 1).as_dict(), metered.as_dict()))
    return out, cost


@pytest.mark.parametrize("method", ["adam", "adamw"])
def test_cost_model_predicts_adam_as_sgd_and_equals_the_metering(method):
    for size in (1, 2):
        per_rank = run_threads(lambda comm: metered_and_predicted(comm, method), size) if size > 1 else [metered_and_predicted(SerialComm(), method)]
        for pairs, cost in per_rank:
            assert len(pairs) == 2
            for predicted, metered in pairs:
                assert predicted == metered
                assert metered["gradient"]["collectives"] == cost.updates_per_epoch(24)  # one allreduce per update
    for P in (1, 4):
        adam, sgd = cost.predict(method, 64, P), cost.predict("sgd", 64, P)
        assert adam.method == method
        a, s = attrs.asdict(adam), attrs.asdict(sgd)
        for key in ("speedup", "efficiency"):  # NaN outside a scaling table
            assert math.isnan(a.pop(key)) and math.isnan(s.pop(key))
        assert {**a, "method": "sgd"} == s


# ------------------------------------------------------------------ checkpoints
class StopAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_iteration(self, record, state):
        return state.iteration >= self.epoch


@pytest.mark.parametrize("method, dtype", [("adam", "float64"), ("adamw", "float64"), ("adamw", "float32")])
def test_a_resumed_run_is_bitwise_the_uninterrupted_one(method, dtype, tmp_path):
    data = load_dataset("digits", dtype=np.dtype(dtype))

    def config():
        return TrainConfig(method=method, epochs=4, batch_size=64, lr=0.01, weight_decay=1e-3, beta1=0.85, beta2=0.995, seed=2)

    def model():
        return MLP([64, 16, 10], dtype=dtype)

    whole = fit(model(), data, config(), warm_up=False)
    saves = Checkpointing(directory=tmp_path, every=3)
    first = fit(model(), data, config(), callbacks=[StopAt(2)], checkpoints=saves, warm_up=False)
    assert first.status is Status.STOPPED and first.state.iteration == 2
    with np.load(next(tmp_path.glob("state-00000002-*.npz")), allow_pickle=False) as archive:
        assert {"theta", "velocity", "second_moment"} <= set(archive.files)
    rest = fit(model(), data, config(), checkpoints=saves, resume=True, warm_up=False)
    assert rest.status is Status.COMPLETED and rest.state.iteration == 4
    assert [r.loss for r in first.history + rest.history] == [r.loss for r in whole.history]
    for name in ("theta", "velocity", "second_moment"):
        np.testing.assert_array_equal(getattr(rest.state, name), getattr(whole.state, name))
    assert rest.state.applied == whole.state.applied == rest.state.updates


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    "key, value",
    [
        ("beta1", 0.0), ("beta1", 1.0), ("beta1", -0.1), ("beta1", 1.5), ("beta1", math.nan), ("beta1", True), ("beta1", "0.9"),
        ("beta2", 0.0), ("beta2", 1.0), ("beta2", 2.0), ("beta2", math.inf),
        ("adam_eps", 0.0), ("adam_eps", -1e-8), ("adam_eps", math.inf), ("adam_eps", math.nan),
    ],
)
def test_bad_adam_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"^{key}: expected"):
        TrainConfig(method="adam", **{key: value})
    with pytest.raises(ConfigError, match=f"^{key}: expected"):
        make_run_config({"method": "adamw", key: value})


# ------------------------------------------------------------------ the CLI
SMALL = ["--hidden", "16", "--batch-size", "64", "--seed", "1", "--lr", "0.01", "--epochs", "2"]


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_cli_trains_with_adam(tmp_path):
    metrics = tmp_path / "m.jsonl"
    result = invoke("train", "--method", "adam", *SMALL, "--metrics", str(metrics))
    assert result.exit_code == 0, result.output
    assert "adam on digits" in result.stdout and "done: 2 epochs" in result.stdout
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    train_config = lines[0]["config"]["train"]
    assert train_config["method"] == "adam" and (train_config["beta1"], train_config["beta2"], train_config["adam_eps"]) == (0.9, 0.999, 1e-8)
    records = [line for line in lines if line["kind"] == "iteration"]
    assert len(records) == 2 and records[1]["loss"] < records[0]["loss"]


def test_cli_adamw_settings_from_a_config_file_and_resume(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('method = "adamw"\nweight_decay = 0.01\n[train]\nbeta1 = 0.8\nbeta2 = 0.99\nadam_eps = 1e-7\n')
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["train", "--config", str(cfg), *SMALL[:-1]]
    assert invoke(*args, "4", "--checkpoint-dir", str(one), "--metrics", str(one / "m.jsonl")).exit_code == 0
    assert invoke(*args, "2", "--checkpoint-dir", str(two)).exit_code == 0
    result = invoke(*args, "4", "--checkpoint-dir", str(two), "--resume")
    assert result.exit_code == 0, result.output
    assert "resumed from iteration 2" in result.stdout
    a = np.load(next(one.glob("state-00000004-*.npz")), allow_pickle=False)
    b = np.load(next(two.glob("state-00000004-*.npz")), allow_pickle=False)
    assert set(a.files) == set(b.files) >= {"theta", "velocity", "second_moment"}
    for name in a.files:
        assert np.array_equal(a[name], b[name]), name
    config = json.loads((one / "m.jsonl").read_text().splitlines()[0])["config"]["train"]
    assert (config["method"], config["beta1"], config["beta2"], config["adam_eps"], config["weight_decay"]) == ("adamw", 0.8, 0.99, 1e-7, 0.01)


@pytest.mark.parametrize("text, key", [("beta1 = 1.0\n", "beta1"), ("beta2 = 0\n", "beta2"), ("adam_eps = -1.0\n", "adam_eps")])
def test_cli_refuses_bad_adam_settings_with_one_line(tmp_path, text, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('method = "adam"\n' + text)
    result = invoke("train", "--config", str(cfg))
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: expected")
