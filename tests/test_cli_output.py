"""What ``hessfree train`` prints and refuses: a header naming the columns, k/N, time per
iteration, elapsed and ETA, ≤ ~100 characters a line by default, "passes", one line per
epoch for first-order methods, "val" with a validation split, the compile notice; options
that do not apply, checkpoint directories of another run, ``--debug``; the sample config."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hessfree.cli import main as cli_main
from hessfree.cli.main import main
from hessfree.cli.run import Progress, duration
from hessfree.data import load_dataset
from hessfree.models import MLP
from hessfree.train import Callback, TrainConfig, fit
from hessfree.train.runconfig import load_toml, make_run_config

ROOT = Path(__file__).resolve().parents[1]
HF = ["--method", "gn-cg", "--hidden", "16", "--batch-size", "200", "--cg-max-iter", "15", "--seed", "1"]
FIRST_ORDER = ["--method", "msgd", "--hidden", "16", "--batch-size", "200", "--seed", "1"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def table(stdout: str) -> tuple[str, list[str]]:
    """(the column header line, the progress lines) of a run's output."""
    lines = stdout.splitlines()
    header = next(i for i, l in enumerate(lines) if re.match(r"^\s*(iter|epoch)\s", l))
    rows = [l for l in lines[header + 1:] if re.match(r"^\s*\d+/\d+\s", l)]
    return lines[header], rows


# ------------------------------------------------------------------ the progress lines
def test_hf_progress_names_its_columns_and_counts_k_of_n():
    result = invoke("train", *HF, "--iterations", "3")
    assert result.exit_code == 0, result.output
    header, rows = table(result.stdout)
    for name in ("iter", "loss", "train err", "test err", "λ", "ρ", "cg", "passes", "s/iter", "elapsed", "ETA"):
        assert name in header, name
    assert [r.split()[0] for r in rows] == ["1/3", "2/3", "3/3"]
    assert all(re.search(r"\d+\.\d\ds\s", r) for r in rows)  # seconds per iteration
    assert rows[-1].split()[-1] == "0.0s"  # nothing left: ETA 0
    assert "passes: effective epochs" in result.stdout and "epochs " not in header
    assert "done: 3 iterations" in result.stdout


def test_default_lines_fit_in_100_characters_and_verbose_adds_columns():
    plain = invoke("train", *HF, "--iterations", "2", "--simulate", "ethernet-10g")
    verbose = invoke("train", *HF, "--iterations", "2", "-v")
    assert plain.exit_code == verbose.exit_code == 0, plain.output + verbose.output
    assert max(len(l) for l in plain.stdout.splitlines()) <= 100, plain.stdout
    v_header, v_rows = table(verbose.stdout)
    assert {"α", "curvature", "stop", "comm", "MB sent"} <= set(re.split(r"\s{2,}", v_header.strip()))
    assert max(len(l) for l in v_rows) > 100 and "kernels ready in" in verbose.stdout


def test_first_order_prints_one_line_per_epoch_numbered_by_epochs():
    result = invoke("train", *FIRST_ORDER, "--epochs", "3")
    assert result.exit_code == 0, result.output
    header, rows = table(result.stdout)
    assert header.split()[0] == "epoch" and "s/epoch" in header and "λ" not in header
    assert [r.split()[0] for r in rows] == ["1/3", "2/3", "3/3"]  # not the update count (6 per epoch)
    assert "updates" in table(invoke("train", *FIRST_ORDER, "--epochs", "1", "-v").stdout)[0]


def test_a_validation_split_is_called_val():
    result = invoke("train", *HF, "--iterations", "1", "--validation", "0.2")
    assert result.exit_code == 0, result.output
    header, _ = table(result.stdout)
    assert "val err" in header and "test err" not in header
    assert "269 validation samples" in result.stdout and "validation accuracy" in result.stdout


def test_quiet_prints_the_final_line_only():
    result = invoke("train", *HF, "--iterations", "2", "--quiet")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [l for l in result.stdout.splitlines() if l.startswith("done: ")]


def test_output_is_plain_text_one_line_per_iteration():
    result = invoke("train", *HF, "--iterations", "2")
    assert "\r" not in result.output and "\x1b" not in result.output
    assert len(table(result.stdout)[1]) == 2


def test_durations_read_naturally():
    assert [duration(s) for s in (0.04, 12.34, 65, 3600 * 2 + 185)] == ["0.0s", "12.3s", "1m05s", "2h03m"]
    assert duration(None) == "-"


# ------------------------------------------------------------------ the compile notice
class Events(Callback):
    def __init__(self):
        self.events = []

    def on_warmup_start(self):
        self.events.append("warmup_start")

    def on_warmup_end(self, seconds):
        self.events.append(("warmup_end", seconds >= 0))

    def on_start(self, info):
        self.events.append("start")


def test_fit_reports_the_warm_up_before_the_start():
    hook = Events()
    fit(MLP([64, 8, 10]), load_dataset("digits"), TrainConfig(method="sgd", epochs=1), callbacks=[hook])
    assert hook.events == ["warmup_start", ("warmup_end", True), "start"]
    hook = Events()
    fit(MLP([64, 8, 10]), load_dataset("digits"), TrainConfig(method="sgd", epochs=1), callbacks=[hook], warm_up=False)
    assert hook.events == ["start"]


def test_a_slow_warm_up_says_it_is_compiling():
    lines = []
    slow = Progress(lambda text, err=False: lines.append(text), quiet=False, unit="iterations", compile_notice_after=0)
    slow.on_warmup_start()
    slow.on_warmup_end(42.0)
    assert lines == ["compiling kernels (first run only)…", "kernels compiled in 42.0s (cached for later runs)"]
    lines.clear()
    fast = Progress(lambda text, err=False: lines.append(text), quiet=False, unit="iterations", compile_notice_after=30)
    fast.on_warmup_start()
    fast.on_warmup_end(0.3)
    assert lines == []  # a cached load says nothing


# ------------------------------------------------------------------ no silent surprises
@pytest.mark.parametrize(
    "args, named",
    [
        (["--method", "gn-cg", "--epochs", "3"], "--epochs does not apply to gn-cg"),
        (["--method", "hybrid", "--lr", "0.1"], "--lr does not apply to hybrid"),
        (["--method", "bicgstab", "--momentum", "0.5"], "--momentum does not apply to bicgstab"),
        (["--method", "sgd", "--iterations", "3"], "--iterations does not apply to sgd"),
        (["--method", "msgd", "--cg-max-iter", "3"], "--cg-max-iter does not apply to msgd"),
        (["--method", "adam", "--damping", "2"], "--damping does not apply to adam"),
        (["--method", "sgd", "--momentum", "0.5"], "--momentum does not apply to sgd"),
        (["--checkpoint-every", "2"], "--checkpoint-every needs --checkpoint-dir"),
        (["--sim-collective", "tree"], "--sim-collective needs --simulate"),
        (["--quiet", "-v"], "cannot be combined"),
    ],
)
def test_options_that_do_not_apply_are_refused_by_name(args, named):
    result = invoke("train", *args)
    assert result.exit_code == 2
    assert named in one_error_line(result)


def test_every_option_that_does_not_apply_is_named_in_one_line():
    line = one_error_line(invoke("train", "--method", "sgd", "--iterations", "3", "--damping", "2"))
    assert "--iterations" in line and "--damping" in line


def test_config_file_keys_that_do_not_apply_name_the_file(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('method = "sgd"\n[train]\ncg_max_iter = 5\n')
    result = invoke("train", "--config", cfg)
    assert result.exit_code == 2
    assert f"cg_max_iter (in {cfg}) does not apply to sgd" in one_error_line(result)


def test_a_checkpoint_directory_of_another_run_needs_resume_or_overwrite(tmp_path):
    ck = tmp_path / "ck"
    assert invoke("train", *HF, "--iterations", "3", "--checkpoint-dir", ck, "--quiet").exit_code == 0
    refused = invoke("train", *HF, "--iterations", "2", "--checkpoint-dir", ck)
    assert refused.exit_code == 2
    line = one_error_line(refused)
    assert "already holds checkpoints" in line and "--resume" in line and "--overwrite" in line
    replaced = invoke("train", *HF, "--iterations", "1", "--checkpoint-dir", ck, "--overwrite", "--quiet")
    assert replaced.exit_code == 0, replaced.output
    names = sorted(p.name for p in ck.iterdir())
    assert [n.split("-")[1] + n[n.rindex("."):] for n in names] == ["00000001.json", "00000001.npz"], names
    assert invoke("train", *HF, "--iterations", "2", "--checkpoint-dir", ck, "--resume", "--overwrite").exit_code == 2


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(monkeypatch):
    import hessfree.cli.run as run_module

    def broken(values, echo):
        raise RuntimeError("a bug")

    monkeypatch.setattr(run_module, "run_training", broken)
    plain = invoke("train", "--iterations", "1")
    assert plain.exit_code == 1
    assert "internal error: RuntimeError: a bug" in one_error_line(plain) and "--debug" in plain.stderr
    debug = invoke("train", "--iterations", "1", "--debug")
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr and debug.stderr.strip().splitlines()[-1].startswith("error: internal error")


def test_the_applicability_rules_name_only_keys_the_run_config_knows():
    from hessfree.train.runconfig import RUN_KEYS, TRAIN_KEYS

    assert set(cli_main._applicability()) <= set(TRAIN_KEYS) | set(RUN_KEYS)


# ------------------------------------------------------------------ the sample config, completion
def test_the_sample_config_loads_and_applies_to_its_method():
    path = ROOT / "examples" / "digits.toml"
    values = load_toml(path)
    config = make_run_config(values)
    cli_main.check_applicable(config, {k: k for k in values})
    assert config.dataset.value == "digits" and config.save_model


def test_shell_completion_script_is_available():
    script = Path(sys.executable).parent / "hessfree"
    if not script.exists():
        pytest.skip("the hessfree console script is not installed beside this Python")
    env = dict(os.environ, _HESSFREE_COMPLETE="bash_source")
    out = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "_HESSFREE_COMPLETE" in out.stdout and "complete" in out.stdout
