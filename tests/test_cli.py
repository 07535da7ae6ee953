"""The ``pyro-flows`` command end to end, on small settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

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


def test_threads_option(digits_run, capsys):
    threads = torch.get_num_threads()
    try:
        assert main(["evaluate", str(digits_run), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
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
