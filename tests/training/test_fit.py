"""fit's non-finite guard keeps every good step and waits for the device once per step; fit
takes the user's optimizer and loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pyro_flows
from pyro_flows import fit

from helpers import Quadratic, Sabotaged


def toy(n: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(1)) + 1.0


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind, every", [("loss", 7), ("gradient", 5)])
def test_guard_keeps_every_good_step(kind, every):
    # Old guard: each bad step rolled back to a snapshot up to 100 steps old; with a NaN loss
    # every 7th step 11 of ~51 good steps survived, with a NaN gradient every 5th the epoch
    # ended at the initial model.
    model = Sabotaged(lambda call: call % every == 0, kind)
    start = weights(model)
    history = fit(model, toy(256), epochs=3, batch_size=16, progress=False)
    total = 3 * 16
    bad = total // every
    assert model.calls == total and sum(history.skipped_steps) == bad
    assert history.steps[-1] == total - bad  # every good step took effect
    assert all(math.isfinite(v) for v in history.train_loss) and not same(weights(model), start)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_a_skipped_step_changes_nothing(kind):
    model = Sabotaged(lambda call: call == 3, kind)
    seen = []  # the weights at the start of each step

    def loss(m, x):
        seen.append(weights(m))
        return -m.log_prob(x)

    history = fit(model, toy(80), epochs=1, batch_size=16, warmup_steps=0, loss=loss,
                  progress=False)
    assert history.skipped_steps == [1] and history.steps == [4]
    assert not same(seen[1], seen[2])  # step 2 moved the weights
    assert same(seen[2], seen[3])  # step 3 was skipped: nothing to roll back
    assert not same(seen[3], seen[4])


def test_a_run_without_an_effective_step_is_an_error():
    model = Sabotaged(lambda call: True)
    with pytest.raises(pyro_flows.training.NonFiniteTraining, match="no step took effect"):
        fit(model, toy(64), epochs=1, batch_size=16, progress=False)


def test_one_host_sync_per_step(monkeypatch):
    syncs = []
    for name in ("item", "__bool__", "__float__", "tolist"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _real=real, **k: (syncs.append(1), _real(self, *a, **k))[1])
    model = Quadratic()
    fit(model, torch.randn(160, 1), epochs=1, batch_size=16, warmup_steps=0, progress=False)
    monkeypatch.undo()
    assert len(syncs) <= 10 + 2  # 10 steps, plus the epoch's mean loss and bookkeeping


def test_fit_takes_the_users_optimizer_and_loss():
    model = Quadratic()
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    used = []

    def loss(m, x):
        used.append(len(x))
        return ((x - m.theta) ** 2).sum(-1)  # a squared error instead of the NLL

    history = fit(model, torch.full((32, 1), 3.0), epochs=5, batch_size=8, warmup_steps=0,
                  optimizer=sgd, loss=loss, progress=False)
    assert used and set(used) == {8} and history.steps[-1] == 20
    assert model.theta.item() == pytest.approx(3.0, abs=1e-3)
    assert sgd.state_dict()["param_groups"][0]["lr"] == 0.5


def test_a_float64_model_keeps_float64_losses():
    """The loss is never cast down: 1 + 1e-12 survives in float64 and not in float32."""
    model = Quadratic().double()
    loss = lambda m, x: 1 + 1e-12 + 0 * m.log_prob(x)
    history = fit(model, torch.ones(8, 1, dtype=torch.float64), epochs=1, batch_size=8,
                  warmup_steps=0, loss=loss, progress=False)
    assert history.train_loss[0] == pytest.approx(1 + 1e-12, rel=1e-15, abs=0)
    assert history.train_loss[0] != 1.0
