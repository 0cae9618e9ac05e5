"""Fault suite, bad configurations (causes 1-3 of issue 17): wrong types are refused, not
coerced; a config file that is not UTF-8 is a usage error; numbers beyond what the code
can hold are refused naming the key. Every case: exit 2 and one line naming the key."""

from __future__ import annotations

import pytest
from fault_helpers import F, invoke, one_error_line, run_cli

from hessfree.comm import make_comm, run_threads
from hessfree.comm.mpi import MPIComm
from hessfree.errors import ConfigError

# ------------------------------------------------------------------ cause 1: types


@pytest.mark.parametrize(
    "text, key",
    [
        ('quiet = "no"\n', "quiet"),
        ("metrics = true\n", "metrics"),
        ('resume = "false"\n', "resume"),
        ('checkpoint_every = "5"\n', "checkpoint_every"),
        ("ranks = 2.0\n", "ranks"),
        ("samples = true\n", "samples"),
        ('comm_timeout = "60"\n', "comm_timeout"),
        ("dtype = 32\n", "dtype"),
        ("seed = 1.5\n", "seed"),
        ("save_model = 1\n", "save_model"),
        ('[train]\ndamping = "1"\n', "damping"),
    ],
)
def test_a_wrong_type_in_a_config_file_is_refused_naming_the_key(tmp_path, monkeypatch, text, key):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "run.toml"
    cfg.write_text(text)
    result = invoke("train", "--config", cfg, *F)  # F holds --quiet: a flag must not hide the file's error
    assert result.exit_code == 2, result.output
    assert f"{key}:" in one_error_line(result)
    assert not (tmp_path / "True").exists()  # metrics = true wrote a file named True


# ------------------------------------------------------------------ cause 2: encoding


def test_a_config_file_that_is_not_utf8_is_a_usage_error(tmp_path):
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes('activation = "tanh" # caf\xe9\n'.encode("latin-1"))
    result = invoke("train", "--config", cfg, *F)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "UTF-8" in line and str(cfg) in line


# ------------------------------------------------------------------ cause 3: numbers


@pytest.mark.parametrize("backend", [["--comm", "serial"], ["--comm", "threads", "--ranks", "2"], []])
def test_a_huge_comm_timeout_is_refused_on_every_backend(backend):
    result = invoke("train", *F, *backend, "--comm-timeout", "1e300")
    assert result.exit_code == 2
    assert "comm_timeout" in one_error_line(result)


def test_the_library_bounds_the_timeout_of_every_backend():
    for make in (lambda: make_comm("serial", timeout=1e300), lambda: run_threads(lambda c: None, 2, timeout=1e300),
                 lambda: MPIComm(timeout=1e300)):  # checked before MPI is even imported
        with pytest.raises(ConfigError, match="timeout"):
            make()


@pytest.mark.parametrize(
    "args, key",
    [
        (["--simulate", "omni-path", "--sim-latency", "1e300"], "sim_latency"),
        (["--simulate", "omni-path", "--sim-bandwidth", "1e-300"], "sim_bandwidth"),
        (["--simulate", "omni-path", "--sim-compute-scale", "1e300"], "sim_compute_scale"),
        (["--simulate", "omni-path", "--sim-compute-scale", "1e-300"], "sim_compute_scale"),
        (["--samples", "0"], "samples"),
        (["--validation", "1.5"], "validation"),
        (["--checkpoint-every", "0", "--checkpoint-dir", "ck"], "checkpoint_every"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_key(args, key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", *F, *args)
    assert result.exit_code == 2, result.output
    assert key in one_error_line(result)


def test_a_hundred_thousand_thread_ranks_are_refused_at_once():
    # a subprocess with a deadline: before the fix this started 100,000 threads and hung
    result = run_cli("train", *F, "--comm", "threads", "--ranks", "100000", timeout=60)
    assert result.exit_code == 2
    assert "ranks" in one_error_line(result)


def test_huge_but_harmless_numbers_still_run(tmp_path):
    """Beyond what the code needs is not an error: a batch larger than the data is the
    data, a Krylov cap of 10^20 is never reached, a checkpoint period of 10^20 saves at
    the end."""
    result = invoke("train", *F, "--batch-size", str(10**14), "--cg-max-iter", str(10**20),
                    "--checkpoint-dir", tmp_path / "ck", "--checkpoint-every", str(10**20))
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "ck").glob("state-00000002*.json"))) == 1
