"""The parts of pyro_flows.training on their own: train_step, NonFiniteGuard, Checkpointer,
mean_nll, and an interrupted fit resumed mid-epoch."""

from __future__ import annotations

import math

import pytest
import torch

import pyro_flows
from pyro_flows.training import (Checkpointer, NonFiniteGuard, NonFiniteTraining, Objective,
                                 TrainingInterrupted, fit, mean_nll, train_step)

from helpers import Quadratic


def test_train_step_gives_gradients_and_leaves_the_optimizer_alone():
    model = Quadratic(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    result = train_step(Objective(model), x, optimizer, list(model.parameters()))
    assert torch.equal(model.theta.detach(), torch.zeros(2))  # not stepped
    assert result.loss.item() == pytest.approx(0.5 * (1 + 4 + 9 + 16))
    assert torch.allclose(model.theta.grad, -x.mean(0))  # gradient of the batch mean
    assert result.grad_norm.item() == pytest.approx(x.mean(0).norm().item())
    clipped = train_step(Objective(model), x, optimizer, list(model.parameters()),
                         clip_grad_norm=0.1)
    assert model.theta.grad.norm().item() == pytest.approx(0.1, rel=1e-4)
    assert clipped.grad_norm.item() == pytest.approx(result.grad_norm.item())


def test_objective_names_a_loss_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"one value per example, shape \(3,\), got \(3, 2\)"):
        Objective(Quadratic(2), loss=lambda m, x: (x - m.theta) ** 2)(torch.zeros(3, 2))


def test_guard_counts_and_gives_up_with_advice():
    guard = NonFiniteGuard(max_bad_steps=2, advice="lower the lr")
    nan, one = torch.tensor(math.nan), torch.tensor(1.0)
    assert guard.allows(one, one) and not guard.allows(nan, one)
    assert guard.allows(one, one) and guard.consecutive == 0 and guard.skipped == 1
    assert not guard.allows(one, torch.tensor(math.inf))
    with pytest.raises(NonFiniteTraining, match="2 consecutive.*lower the lr") as error:
        guard.allows(nan, one)
    assert error.value.skipped == 3 and error.value.consecutive == 2
    copy = NonFiniteGuard()
    copy.load_state_dict(guard.state_dict())
    assert copy.skipped == 3
    with pytest.raises(ValueError, match="max_bad_steps"):
        NonFiniteGuard(0)


def test_checkpointer_round_trip_and_refusals(tmp_path):
    saver = Checkpointer(tmp_path, {"lr": [0.1]})
    assert not saver.exists()
    with pytest.raises(FileNotFoundError):
        saver.load()
    saver.save({"epoch": 2, "weights": torch.ones(3)})
    assert saver.load()["epoch"] == 2
    with pytest.raises(ValueError, match=r"different run \(lr differ\)"):
        Checkpointer(tmp_path, {"lr": [0.2]}).load()
    (tmp_path / ".checkpoint.pt.dead.tmp").write_bytes(b"half")
    assert [p.name for p in saver.remove_stale_temp_files()] == [".checkpoint.pt.dead.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_mean_nll_matches_log_prob_and_takes_datasets():
    model = pyro_flows.FlowModel.build("realnvp", (2,), num_layers=2)
    x = torch.randn(30, 2)
    nll, bpd = mean_nll(model, x, batch_size=7)
    with torch.no_grad():
        assert nll == pytest.approx(-model.log_prob(x).mean().item(), rel=1e-5)
    assert bpd == pytest.approx(nll / (2 * math.log(2)))
    assert mean_nll(Quadratic(2), torch.utils.data.TensorDataset(x))[1] is None


def test_an_interrupt_mid_epoch_resumes_exactly(tmp_path):
    def model():
        torch.manual_seed(0)
        return pyro_flows.FlowModel.build("realnvp", (2,), num_layers=2, data_levels=None)

    data = torch.randn(200, 2)
    settings = dict(epochs=3, batch_size=16, warmup_steps=3, seed=1, progress=False,
                    val_data=data[:20])
    torch.manual_seed(5)
    straight = model()
    h_straight = fit(straight, data, **settings)

    steps = []
    torch.manual_seed(5)
    first = model()
    with pytest.raises(TrainingInterrupted, match="epoch 2, after step 4") as stop:
        fit(first, data, checkpoint_dir=tmp_path, progress=False, **{
            k: v for k, v in settings.items() if k != "progress"},
            interrupt=lambda: steps.append(1) or len(steps) == 13 + 4)
    assert stop.value.saved
    torch.rand(10)  # other work between the runs
    resumed = model()
    h_resumed = fit(resumed, data, checkpoint_dir=tmp_path, resume=True, **settings)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert h_straight.train_loss == h_resumed.train_loss
    assert h_straight.steps == h_resumed.steps
