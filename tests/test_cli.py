"""The ``pyro-flows`` command end to end, on small settings."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import pyro_flows
from pyro_flows.cli import load_run, main

TOY = ["fit", "two_moons", "--flow", "realnvp", "--epochs", "1", "--layers", "2", "--hidden",
       "16", "--batch-size", "512", "--quiet"]
DIGITS = ["fit", "digits", "--flow", "glow", "--epochs", "1", "--levels", "1", "--steps", "1",
          "--hidden", "8", "--batch-size", "256", "--quiet"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    assert main([*TOY, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    assert main([*DIGITS, "--out", str(out)]) == 0
    return out


def test_fit_writes_a_complete_run_for_2d_data(toy_run):
    names = {p.name for p in toy_run.iterdir()}
    assert {"config.json", "model.pt", "checkpoint.pt", "metrics.json", "loss.png",
            "density.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    metrics = json.loads((toy_run / "metrics.json").read_text())
    assert np.isfinite(metrics["test_nll"]) and "test_bpd" not in metrics
    assert metrics["epochs"] == 1 and metrics["num_parameters"] > 0


def test_fit_on_digits_reports_bits_per_dim(digits_run):
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["levels"] == 17
    # Bits/dim is the NLL per example in base 2, per pixel.
    assert metrics["test_bpd"] == pytest.approx(metrics["test_nll"] / (64 * np.log(2)))
    # One epoch of a tiny Glow is already far better than a uniform model over 17 levels.
    assert metrics["test_bpd"] < np.log2(17)
    assert (digits_run / "samples.png").stat().st_size > 0


def test_evaluate_reproduces_the_test_metrics(digits_run, capsys):
    assert main(["evaluate", str(digits_run)]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert printed["test_nll"] == pytest.approx(metrics["test_nll"], rel=1e-6)
    assert printed["test_bpd"] == pytest.approx(metrics["test_bpd"], rel=1e-6)


def test_sample_without_out_writes_what_the_data_allow(tmp_path, capsys):
    """Samples of vectors that cannot be drawn (not images, not 2-D) go to a .npy by default,
    instead of a .png the command then refuses to draw."""
    data = tmp_path / "table.npy"
    np.save(data, np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32))
    run = tmp_path / "run"
    assert main(["fit", str(data), "--flow", "realnvp", "--epochs", "1", "--layers", "2",
                 "--hidden", "8", "--quiet", "--out", str(run)]) == 0
    assert main(["sample", str(run), "--n", "4"]) == 0, capsys.readouterr().err
    assert np.load(run / "samples-T1.npy", allow_pickle=False).shape == (4, 3)


def test_sample_to_npy_and_png(digits_run, tmp_path):
    npy = tmp_path / "s.npy"
    assert main(["sample", str(digits_run), "--n", "5", "--temperature", "0.7",
                 "--out", str(npy)]) == 0
    samples = np.load(npy, allow_pickle=False)
    assert samples.shape == (5, 1, 8, 8)
    assert samples.min() >= 0 and samples.max() <= 16 and np.all(samples == np.floor(samples))
    png = tmp_path / "s.png"
    assert main(["sample", str(digits_run), "--n", "4", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_run_gives_the_trained_model(toy_run):
    model, config = load_run(toy_run)
    assert config["flow"] == "realnvp" and model.sample(3).shape == (3, 2)


def test_an_existing_run_is_never_overwritten_silently(toy_run, capsys):
    before = (toy_run / "model.pt").read_bytes()
    assert main([*TOY, "--out", str(toy_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (toy_run / "model.pt").read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["fit", "no-such-data", "--quiet"], "unknown data set"),
    (["evaluate", "/nonexistent/run"], "is missing"),
    (["sample", "/nonexistent/run"], "is missing"),
    (["fit", "two_moons", "--flow", "no_such_flow", "--quiet"], "no transform named"),
])
def test_bad_input_is_named(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_threads_option(digits_run, capsys, monkeypatch):
    """--threads holds while the command runs; a caller of ``main`` gets its own count back."""
    import pyro_flows.cli
    threads, seen = torch.get_num_threads(), []
    evaluate = pyro_flows.cli.evaluate
    monkeypatch.setattr(pyro_flows.cli, "evaluate",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or evaluate(*a, **k))
    try:
        assert main(["evaluate", str(digits_run), "--threads", "1"]) == 0
        assert seen == [1] and torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(SystemExit):
        main(["evaluate", str(digits_run), "--threads", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_corrupt_weights_are_reported(toy_run, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((toy_run / "config.json").read_text())
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(broken)]) == 2
    assert "cannot read the run" in capsys.readouterr().err


def test_resume_with_other_settings_is_refused(toy_run, capsys):
    assert main([*TOY[:-1], "--hidden", "32", "--resume", "--out", str(toy_run), "--quiet"]) == 2
    assert "differ" in capsys.readouterr().err


def test_weights_load_without_pickle(toy_run):
    state = torch.load(toy_run / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


# -- issue 10: runs never lose work -------------------------------------------------------
def cli(*argv, cwd=None, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "pyro_flows.cli", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_resume_continues_a_vector_run(tmp_path, capsys):
    # hidden_dims came back from config.json as a list and was compared with a tuple.
    out = tmp_path / "r"
    assert main([*TOY, "--out", str(out)]) == 0
    assert main([*TOY[:5], "2", *TOY[6:], "--out", str(out), "--resume"]) == 0, \
        capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["status"] == "ok"
    assert json.loads((out / "config.json").read_text())["flow_kwargs"]["hidden_dims"] == [16, 16]


def test_resume_records_the_settings_it_ran_with(tmp_path, monkeypatch, capsys):
    """A resume may change --epochs: config.json then holds the new count and the command that
    resumes this run, and metrics.json's seconds cover every epoch, not only the last call's."""
    import contextlib

    import pyro_flows.cli

    class SecondEpoch:  # "Ctrl-C" once the first epoch is done
        def is_set(self) -> bool:
            return (tmp_path / ".r.partial" / "checkpoint.pt").exists()

    out = tmp_path / "r"
    two = [*TOY[:5], "2", *TOY[6:], "--out", str(out)]
    with monkeypatch.context() as m:
        m.setattr(pyro_flows.cli, "_first_ctrl_c_asks_to_stop",
                  contextlib.contextmanager(lambda: (yield SecondEpoch())))
        assert main(two) == 2
    assert "resume with" in capsys.readouterr().err and not out.exists()
    assert main([*TOY[:5], "3", *TOY[6:], "--out", str(out), "--resume"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 3 and " --epochs 3 " in config["command"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and len(metrics["history"]["seconds"]) == 3
    assert metrics["seconds"] == pytest.approx(sum(metrics["history"]["seconds"]), abs=0.05)


def test_resume_continues_an_image_run(digits_run, tmp_path):
    out = tmp_path / "d"
    shutil.copytree(digits_run, out)
    assert main([*DIGITS[:5], "2", *DIGITS[6:], "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_a_run_without_an_effective_step_fails_and_publishes_nothing(tmp_path, capsys):
    np.save(tmp_path / "huge.npy", np.random.default_rng(0).standard_normal((200, 2)) * 1e30)
    out = tmp_path / "h"
    code = main(["fit", str(tmp_path / "huge.npy"), "--flow", "realnvp", "--epochs", "1",
                 "--layers", "2", "--hidden", "8", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "no training step took effect" in err and "--lr" in err
    assert "e+30: standardize them" in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / ".h.partial").exists()


def test_metrics_json_is_strict(toy_run):
    text = (toy_run / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))


@pytest.mark.parametrize("argv, message", [
    (["fit", "two_moons", "--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (["fit", "two_moons", "--batch-size", "-3"], "--batch-size: must be at least 1"),
    (["fit", "two_moons", "--lr", "nan"], "--lr: must be a positive number"),
    (["fit", "two_moons", "--device", "cuda"], "--device cuda: this torch has no CUDA"),
    (["fit", "two_moons", "--device", "gpu7"], "is not a device torch knows"),
    (["fit", "two_moons", "--out", "afile"], "--out afile is a file"),
    (["fit", "empty.npy"], "empty.npy: empty or truncated"),
    (["fit", "few.csv"], "few.csv has 5 examples; fit needs at least 6"),
    (["fit", "nch.npy"], "(20, 3, 4) are ambiguous"),
    (["fit", "odd.npy", "--flow", "glow"], "7x7 images cannot be halved"),
    (["fit", "digits", "--levels", "9"], "--levels 9: event shape (1, 8, 8) allows 1 to 3"),
    (["fit", "two_moons", "--resume", "--overwrite"], "pass one"),
    (["fit", "two_moons", "--resume"], "holds no run to continue"),
    (["evaluate", "nokey"], "lacks event_shape"),
    (["evaluate", "partial"], "holds no finished run"),
])
def test_every_bad_input_is_one_line_and_exit_code_2(argv, message, tmp_path, monkeypatch,
                                                     capsys, toy_run):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "few.csv").write_text("a,b\n" + "1,2\n" * 5)
    np.save(tmp_path / "nch.npy", np.zeros((20, 3, 4)))
    np.save(tmp_path / "odd.npy", np.zeros((20, 1, 7, 7)))
    (tmp_path / "nokey").mkdir()
    config = json.loads((toy_run / "config.json").read_text())
    del config["event_shape"]
    (tmp_path / "nokey" / "config.json").write_text(json.dumps(config))
    (tmp_path / "nokey" / "model.pt").write_bytes((toy_run / "model.pt").read_bytes())
    (tmp_path / ".partial.partial").mkdir()
    (tmp_path / ".partial.partial" / "config.json").write_text(
        (toy_run / "config.json").read_text())
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_:
        sys.exit(main([*argv, "--quiet"] if argv[0] == "fit" else argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_help_shows_defaults_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    for option in ("--epochs", "--batch-size", "--lr", "--seed", "--device"):
        assert option in text
    assert "(default: 30)" in text and "(default: cpu)" in text and "(default: 0.002)" in text
    # An option whose help already says its default, or that has none, is not given a second
    # "(default: None)".
    assert "(default: None)" not in " ".join(text.split())
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"pyro-flows {pyro_flows.__version__}"


def test_files_get_ordinary_permissions(toy_run):
    mask = os.umask(0)
    os.umask(mask)
    for path in toy_run.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def test_a_run_works_from_any_directory_and_refuses_changed_data(tmp_path, monkeypatch,
                                                                 capsys):
    rows = np.random.default_rng(0).standard_normal((60, 2))
    np.savetxt(tmp_path / "data.csv", rows, delimiter=",", header="a,b", comments="")
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "data.csv", "--flow", "realnvp", "--epochs", "1", "--layers", "2",
                 "--hidden", "8", "--quiet", "--out", "run"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", "../run"]) == 0
    assert main(["sample", "../run", "--n", "8", "--out", "s.png"]) == 0
    capsys.readouterr()
    (tmp_path / "data.csv").write_text((tmp_path / "data.csv").read_text() + "1,2\n")
    assert main(["evaluate", "../run"]) == 2
    assert "has changed since the run was trained" in capsys.readouterr().err
    (tmp_path / "data.csv").rename(tmp_path / "moved.csv")
    assert main(["evaluate", "../run"]) == 2
    assert "is gone (moved or deleted)" in capsys.readouterr().err
    assert main(["evaluate", "../run", "--data", "../moved.csv"]) == 0


def test_a_killed_overwrite_leaves_the_old_run_whole(tmp_path, capsys):
    out = tmp_path / "ow"
    assert main([*TOY, "--out", str(out)]) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    job = cli("fit", "circles", "--flow", "realnvp", "--epochs", "200", "--layers", "2",
              "--hidden", "16", "--batch-size", "512", "--quiet", "--out", str(out),
              "--overwrite")
    partial = tmp_path / ".ow.partial" / "checkpoint.pt"
    deadline = time.time() + 60
    while not partial.exists() and time.time() < deadline and job.poll() is None:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.communicate()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["test_nll"] == pytest.approx(json.loads(old["metrics.json"])["test_nll"])
    # the unfinished replacement is kept, and a plain fit says what to do with it
    assert main([*TOY, "--out", str(out)]) == 2
    assert "and an unfinished one" in capsys.readouterr().err


def test_ctrl_c_writes_a_checkpoint_and_prints_the_resume_command(tmp_path):
    out = tmp_path / "c"
    argv = [*TOY[:5], "500", *TOY[6:], "--out", str(out)]
    job = cli(*argv)
    checkpoint = tmp_path / ".c.partial" / "checkpoint.pt"
    deadline = time.time() + 60
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 2 and err.count("\n") == 1, err
    command = err.split("resume with: ")[1].strip()
    assert command == shlex.join(["pyro-flows", *argv, "--resume"])
    ckpt = torch.load(checkpoint, weights_only=True)
    assert ckpt["position"] > 0 or ckpt["epoch"] > 0
    assert not out.exists()


def test_stale_temp_files_are_removed_on_the_next_start(tmp_path):
    out = tmp_path / "t"
    partial = tmp_path / ".t.partial"
    partial.mkdir()
    (partial / ".checkpoint.pt.1234abcd.tmp").write_bytes(b"half")
    assert main([*TOY, "--out", str(out)]) == 0
    assert not partial.exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_log_prob_of_no_examples_is_empty():
    model = pyro_flows.FlowModel.build("realnvp", (2,), num_layers=2)
    assert model.log_prob(torch.empty(0, 2)).shape == (0,)


def test_fit_records_the_preprocessing_and_weight_averaging(tmp_path):
    """New runs use variational dequantization, logit alpha 0.01 and weight averaging
    (benchmarks/quality.py); the config records them so the run rebuilds the same model."""
    out = tmp_path / "run"
    assert main(["fit", "digits", "--epochs", "1", "--steps", "1", "--hidden", "8", "--quiet",
                 "--threads", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dequantization"] == "variational" and config["logit_alpha"] == 0.01
    assert config["dequantizer"] == {"hidden_dims": [64, 64]} and config["ema"] == 0.999
    assert torch.load(out / "checkpoint.pt", weights_only=True)["ema"]["decay"] == 0.999
    assert main(["evaluate", str(out)]) == 0


def test_auto_dequantization_is_variational_on_small_data_only():
    # Measured: the dense variational dequantizer helps on digits (64 values) and gives no
    # clear gain on Fashion-MNIST (784) for 60% more parameters; "auto" is resolved before the
    # config records it.
    from pyro_flows.rundir import dequantization
    assert dequantization("auto", (1, 8, 8)) == "variational"
    assert dequantization("auto", (1, 28, 28)) == "uniform"
    assert dequantization("variational", (1, 28, 28)) == "variational"
    assert dequantization("uniform", (1, 8, 8)) == "uniform"


def test_a_run_written_before_the_new_defaults_still_loads(tmp_path):
    out = tmp_path / "run"
    assert main(["fit", "digits", "--epochs", "1", "--steps", "1", "--hidden", "8", "--quiet",
                 "--threads", "1", "--dequantization", "uniform", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    for key in ("logit_alpha", "dequantizer", "ema"):
        del config[key]  # as runs of the previous release wrote it
    (out / "config.json").write_text(json.dumps(config))
    # The weights no longer match alpha 0.01, but the model rebuilds with alpha 0.05.
    from pyro_flows.rundir import build_model
    assert build_model(config).preprocessing.logit_alpha == 0.05


def test_precision_is_recorded_and_bad_names_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "two_moons", "--epochs", "1", "--quiet", "--threads", "1",
                 "--precision", "bf16-mixed", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16-mixed"
    with pytest.raises(SystemExit) as stop:
        main(["fit", "two_moons", "--precision", "bf16", "--out", str(tmp_path / "x")])
    assert stop.value.code == 2 and "bf16-mixed" in capsys.readouterr().err
