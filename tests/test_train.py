"""Tests of pyro_flows.train.fit: warm-up, clipping, the non-finite guard, validation and early
stopping, the History, input errors, checkpoints and exact resumption."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pyro_flows import FlowModel

import pyro_flows
from pyro_flows.train import CHECKPOINT_NAME, History, fit

from helpers import Quadratic, Sabotaged


class Density(nn.Module):
    """A standard Normal pushed through a pyro-flows transform, as a user would write it."""

    def __init__(self, transform: nn.Module, event_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.transform = transform
        self.register_buffer("zeros", torch.zeros(event_shape))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        base = dist.Normal(self.zeros, 1.0).to_event(self.zeros.dim())
        return dist.TransformedDistribution(base, [self.transform]).log_prob(x)


class DensityWithBPD(Density):
    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        return -self.log_prob(x) / (self.zeros.numel() * math.log(2))


class NoisyDensity(Density):
    """Draws from the torch, numpy and Python RNGs, as dequantization and user code might: a
    resumed run only matches if all three are restored."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        jitter = 1e-2 * torch.rand_like(x) + 1e-3 * float(np.random.rand()) + 1e-3 * random.random()
        return super().log_prob(x + jitter)


class Unreduced(Quadratic):
    """Forgets to sum over the event dimension, as ``Normal`` without ``.to_event`` does."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return dist.Normal(self.theta, 1.0).log_prob(x)


def realnvp(seed: int = 0, cls=Density) -> Density:
    torch.manual_seed(seed)
    return cls(pyro_flows.build("realnvp", event_shape=(2,), num_layers=2, hidden_dims=[16]), (2,))


def vector_glow(seed: int = 0, cls=Density) -> Density:
    torch.manual_seed(seed)
    return cls(pyro_flows.build("glow", event_shape=(3,), num_layers=2, hidden_dims=[16]), (3,))


def image_glow(seed: int = 0, cls=Density) -> Density:
    torch.manual_seed(seed)
    return cls(pyro_flows.build("glow", event_shape=(1, 8, 8), levels=2, steps=2,
                                hidden_channels=16), (1, 8, 8))


def toy(n: int, d: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(d) + 0.5 * torch.randn(d, d, generator=g)  # correlated, off-centre
    return torch.randn(n, d, generator=g) @ mix + 1.0


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: intra-op threads only add synchronization, which on a busy
    # 2-core machine made the image Glow tests 20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def record_adam(monkeypatch):
    """Record the learning rate and gradient norm Adam sees at each step."""
    seen = []
    step = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append((self.param_groups[0]["lr"], torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    return seen


# -- warm-up and clipping -----------------------------------------------------------------
def test_fit_warms_up_each_step(record_adam):
    history = fit(realnvp(), toy(80), epochs=1, batch_size=16, lr=0.01, warmup_steps=3,
                  progress=False)
    assert [lr for lr, _ in record_adam] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.01, 0.01])
    assert history.lr == [pytest.approx(0.01)] and history.steps == [5]


def test_fit_clips_gradient_norm(record_adam):
    data = toy(64) * 100  # far from the initial density: large gradients
    fit(realnvp(), data, epochs=1, batch_size=16, clip_grad_norm=None, progress=False)
    raw = [norm for _, norm in record_adam]
    assert min(raw) > 10
    record_adam.clear()
    fit(realnvp(), data, epochs=1, batch_size=16, clip_grad_norm=1.0, progress=False)
    assert len(record_adam) == 4
    assert all(norm <= 1.0 + 1e-5 for _, norm in record_adam)


# -- the non-finite guard -----------------------------------------------------------------
def test_guard_gives_up_with_advice():
    model = Sabotaged(lambda call: call >= 3)
    with pytest.raises(RuntimeError, match=r"3 consecutive steps.*lower lr.*warmup_steps"):
        fit(model, toy(256), epochs=2, batch_size=16, max_bad_steps=3, progress=False)
    assert model.calls == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- validation, early stopping, History ----------------------------------------------------
def test_history_contents_and_bits_per_dim():
    data, val = toy(96), toy(40, seed=2)
    history = fit(realnvp(cls=DensityWithBPD), data, epochs=3, batch_size=32, lr=5e-3,
                  warmup_steps=2, val_data=val, progress=False)
    for key in ("train_loss", "val_loss", "val_bits_per_dim", "lr", "steps", "skipped_steps",
                "seconds"):
        assert len(getattr(history, key)) == 3, key
    assert history.steps == [3, 6, 9] and history.skipped_steps == [0, 0, 0]
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.val_bits_per_dim == pytest.approx(
        [v / (2 * math.log(2)) for v in history.val_loss])
    assert History.from_dict(json.loads(json.dumps(history.to_dict()))) == history
    assert history.best_epoch == int(np.argmin(history.val_loss))

    plain = fit(realnvp(), data, epochs=1, batch_size=32, val_data=val, progress=False)
    assert plain.val_bits_per_dim == [] and len(plain.val_loss) == 1
    assert fit(realnvp(), data, epochs=1, progress=False).best_epoch is None


def test_validation_matches_direct_computation():
    model, val = realnvp(), toy(50, seed=3)
    history = fit(model, toy(64), epochs=1, batch_size=16, val_data=val, progress=False)
    with torch.no_grad():
        assert history.val_loss[0] == pytest.approx(-model.log_prob(val).mean().item(), rel=1e-5)


def test_early_stopping_restores_best():
    # Training pulls theta from 0 towards 5; the validation data sit at 2, so the validation
    # loss falls, then rises once theta passes 2.
    model, seen = Quadratic(), []
    # The raw weights (ema_decay=None): the callback reads them, and EMA runs have their own test.
    history = fit(model, torch.full((40, 1), 5.0), epochs=50, batch_size=8, lr=0.1,
                  warmup_steps=0, val_data=torch.full((10, 1), 2.0), patience=2, progress=False,
                  ema_decay=None, callback=lambda epoch, h: seen.append(model.theta.item()))
    best = history.best_epoch
    assert history.stopped_early and 0 < best < len(seen) - 1
    assert len(history.val_loss) == best + 3 and history.val_loss[-1] > history.val_loss[best]
    assert model.theta.item() == seen[best] and seen[-1] != seen[best]


def test_callback_stops_training():
    history = fit(realnvp(), toy(32), epochs=5, batch_size=16, progress=False,
                  callback=lambda epoch, h: epoch == 1)
    assert len(history.train_loss) == 2 and not history.stopped_early


def test_progress_bar_does_not_change_training(capsys):
    # The bar measures bits/dim on training batches; it must not draw from the training RNG.
    quiet, shown = realnvp(cls=NoisyDensity), realnvp(cls=NoisyDensity)
    shown.bits_per_dim = lambda x: -Density.log_prob(shown, x + torch.rand_like(x)) / 2
    for model, progress in ((quiet, False), (shown, True)):
        torch.manual_seed(5), np.random.seed(5), random.seed(5)
        fit(model, toy(64), epochs=2, batch_size=16, progress=progress)
    assert "bpd=" in capsys.readouterr().err
    assert same(weights(quiet), weights(shown))


def test_dataset_input_matches_tensor_input():
    a, b, data = realnvp(), realnvp(), toy(50)
    ha = fit(a, data, epochs=2, batch_size=16, val_data=data[:10], progress=False)
    hb = fit(b, TensorDataset(data), epochs=2, batch_size=16, val_data=TensorDataset(data[:10]),
             progress=False)
    assert same(weights(a), weights(b)) and ha.train_loss == hb.train_loss


def test_image_glow_trains_in_float64():
    model = image_glow().double()
    history = fit(model, torch.rand(32, 1, 8, 8), epochs=2, batch_size=16, warmup_steps=2,
                  progress=False)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert history.train_loss[1] < history.train_loss[0]


def test_integer_data_are_cast_to_the_model_dtype():
    model = Quadratic().double()
    fit(model, torch.full((40, 1), 5), epochs=3, batch_size=8, lr=0.1, warmup_steps=0,
        progress=False)
    assert model.theta.dtype == torch.float64 and model.theta.item() > 1


# -- bad input ------------------------------------------------------------------------------
def test_bad_input_is_named():
    model = realnvp()
    with pytest.raises(ValueError, match="data is empty"):
        fit(model, torch.empty(0, 2), progress=False)
    bad = toy(20)
    bad[3, 0], bad[7, 1] = math.nan, math.inf
    with pytest.raises(ValueError, match=r"data has 2 example\(s\) with NaN or infinite.*\[3, 7\]"):
        fit(model, bad, progress=False)
    with pytest.raises(ValueError, match=r"val_data has 2 example"):
        fit(model, toy(20), val_data=bad, progress=False)
    with pytest.raises(ValueError, match=r"data has 1 example"):
        fit(model, TensorDataset(bad[:5]), batch_size=4, progress=False)
    with pytest.raises(TypeError, match="real numbers.*torch.complex64"):
        fit(model, torch.ones(10, 2, dtype=torch.complex64), progress=False)
    with pytest.raises(TypeError, match="Tensor.*or a map-style Dataset, got list"):
        fit(model, [[0.0, 1.0]], progress=False)
    with pytest.raises(ValueError, match=r"val_data examples have shape \(3,\)"):
        fit(model, toy(20), val_data=torch.zeros(5, 3), progress=False)
    with pytest.raises(ValueError, match="patience needs val_data"):
        fit(model, toy(20), patience=3, progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        fit(model, toy(20), batch_size=0, progress=False)
    with pytest.raises(ValueError, match=r"one value per example, shape \(20,\), got \(20, 2\)"):
        fit(Unreduced(), toy(20), progress=False)


# -- checkpoints and resumption -------------------------------------------------------------
def test_checkpoint_guards(tmp_path):
    data, path = toy(32), tmp_path / CHECKPOINT_NAME
    with pytest.raises(FileNotFoundError, match=str(path)):
        fit(realnvp(), data, epochs=1, checkpoint_dir=tmp_path, resume=True, progress=False)
    (tmp_path / f".{CHECKPOINT_NAME}.killed.tmp").write_bytes(b"half")  # a crash mid-save
    fit(realnvp(), data, epochs=1, batch_size=16, checkpoint_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]  # no temp files left
    written = path.read_bytes()
    with pytest.raises(FileExistsError, match="resume=True.*overwrite=True"):
        fit(realnvp(seed=1), data, epochs=1, checkpoint_dir=tmp_path, progress=False)
    assert path.read_bytes() == written
    with pytest.raises(ValueError, match=r"different run \(lr differ\)"):
        fit(realnvp(), data, epochs=2, batch_size=16, lr=0.1, checkpoint_dir=tmp_path,
            resume=True, progress=False)
    with pytest.raises(ValueError, match=r"different run \(model, data differ\)"):
        fit(vector_glow(), toy(40, d=3), epochs=2, batch_size=16, checkpoint_dir=tmp_path,
            resume=True, progress=False)
    fit(realnvp(seed=1), data, epochs=1, checkpoint_dir=tmp_path, overwrite=True, progress=False)
    assert path.read_bytes() != written
    path.write_bytes(written[: len(written) // 2])
    with pytest.raises(RuntimeError, match=f"cannot read checkpoint {path}"):
        fit(realnvp(), data, epochs=2, checkpoint_dir=tmp_path, resume=True, progress=False)
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="not a checkpoint written by pyro_flows.fit"):
        fit(realnvp(), data, epochs=2, checkpoint_dir=tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("build, data", [
    (vector_glow, toy(40, d=3)),
    (image_glow, torch.rand(16, 1, 8, 8)),
], ids=["vector_glow", "image_glow"])
def test_resume_matches_uninterrupted_run(tmp_path, build, data):
    settings = dict(batch_size=8, lr=3e-3, warmup_steps=3, val_data=data[:8], seed=7,
                    progress=False)

    def seeded():
        torch.manual_seed(11), np.random.seed(11), random.seed(11)

    straight = build(cls=NoisyDensity)
    seeded()
    h_straight = fit(straight, data, epochs=4, **settings)

    first_half = build(cls=NoisyDensity)
    seeded()
    fit(first_half, data, epochs=2, checkpoint_dir=tmp_path, **settings)
    torch.rand(100), np.random.rand(100), random.random()  # whatever happens in between
    resumed = build(seed=123, cls=NoisyDensity)  # different initial weights: all must load
    h_resumed = fit(resumed, data, epochs=4, checkpoint_dir=tmp_path, resume=True, **settings)

    assert same(weights(straight), weights(resumed))
    for key in ("train_loss", "val_loss", "lr", "steps", "skipped_steps"):
        assert getattr(h_straight, key) == getattr(h_resumed, key), key
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["epoch"] == 4 and len(ckpt["history"]["train_loss"]) == 4


def test_resume_after_early_stop_keeps_best(tmp_path):
    settings = dict(epochs=50, batch_size=8, lr=0.1, warmup_steps=0, patience=2,
                    val_data=torch.full((10, 1), 2.0), checkpoint_dir=tmp_path, progress=False)
    data = torch.full((40, 1), 5.0)
    first = Quadratic()
    history = fit(first, data, **settings)
    again = Quadratic()
    resumed = fit(again, data, resume=True, **settings)
    assert resumed == history and again.theta.item() == first.theta.item()


def test_validation_evaluates_each_example_once_and_bits_match_the_loss():
    model = FlowModel.build("realnvp", (4,), data_levels=17, num_layers=2)
    seen = []
    log_prob = model.log_prob
    model.log_prob = lambda x: (seen.append(len(x)), log_prob(x))[1]
    val = torch.randint(0, 17, (100, 4)).float()
    history = fit(model, torch.randint(0, 17, (64, 4)).float(), val_data=val, epochs=1,
                  batch_size=64, progress=False)
    # A vector RealNVP has no ActNorm, so initialize has nothing to run: one training step,
    # then validation in 2 batches.
    assert seen == [64, 64, 36]
    assert history.val_bits_per_dim[0] == pytest.approx(history.val_loss[0] / (4 * math.log(2)))
