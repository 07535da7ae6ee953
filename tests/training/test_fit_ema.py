"""``fit(..., ema_decay=...)``: Polyak-averaged weights for evaluation and the returned model,
kept in the checkpoint so that a resumed run is the uninterrupted one."""

from __future__ import annotations

import pytest
import torch

import pyro_flows
from pyro_flows.ema import EMA
from pyro_flows.training import CHECKPOINT_NAME, fit

SETTINGS = dict(batch_size=64, lr=5e-3, warmup_steps=5, progress=False, ema_decay=0.9)


def _model():
    torch.manual_seed(0)
    return pyro_flows.FlowModel.build("glow", (2,), num_layers=2, hidden_dims=(16,))


def _data():
    return pyro_flows.data.two_moons(512, seed=0)


def test_the_returned_model_holds_the_averaged_weights():
    model = _model()
    raw = []
    history = fit(model, _data(), epochs=2, callback=lambda *_: raw.append(
        {k: v.clone() for k, v in model.state_dict().items()}), **SETTINGS)
    assert history.steps[-1] == 16
    # The weights returned differ from the last raw iterate the callback saw.
    returned = model.state_dict()
    assert any(not torch.equal(returned[k], raw[-1][k]) for k in returned if "loc" in k or
               "weight" in k)


def test_validation_scores_the_averaged_weights():
    """With a decay of 0 the average is the last iterate: validation then matches it."""
    data, val = _data(), pyro_flows.data.two_moons(256, seed=1)
    a, b = _model(), _model()
    ha = fit(a, data, epochs=1, val_data=val, **{**SETTINGS, "ema_decay": None})
    hb = fit(b, data, epochs=1, val_data=val, **{**SETTINGS, "ema_decay": 0.0})
    assert ha.val_loss == hb.val_loss
    c = _model()
    hc = fit(c, data, epochs=1, val_data=val, **SETTINGS)  # same training, averaged weights
    assert hc.train_loss == ha.train_loss and hc.val_loss != ha.val_loss


def test_checkpoint_holds_the_average_and_resume_is_exact(tmp_path):
    data = _data()
    straight = _model()
    fit(straight, data, epochs=4, checkpoint_dir=tmp_path / "a", **SETTINGS)
    first = _model()
    fit(first, data, epochs=2, checkpoint_dir=tmp_path / "b", **SETTINGS)
    ckpt = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["ema"]["num_updates"] == 16 and ckpt["ema"]["decay"] == 0.9
    resumed = _model()
    fit(resumed, data, epochs=4, checkpoint_dir=tmp_path / "b", resume=True, **SETTINGS)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_resuming_with_another_decay_is_refused(tmp_path):
    import pytest

    fit(_model(), _data(), epochs=1, checkpoint_dir=tmp_path, **SETTINGS)
    with pytest.raises(ValueError, match="ema_decay"):
        fit(_model(), _data(), epochs=2, checkpoint_dir=tmp_path, resume=True,
            **{**SETTINGS, "ema_decay": 0.5})


def test_ema_alone_averages_towards_the_weights():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.add_(1.0)
    for _ in range(30):
        ema.update(net)
    assert torch.allclose(ema.shadow["weight"], net.weight, atol=1e-6)


def test_early_stopping_returns_the_best_averaged_weights():
    # The default fit averages (ema_decay=0.999): early stopping must restore the average that
    # scored best, not the raw iterate of that epoch.
    from helpers import Quadratic
    model = Quadratic()
    val = torch.full((10, 1), 2.0)
    history = fit(model, torch.full((40, 1), 5.0), epochs=60, batch_size=8, lr=0.1,
                  warmup_steps=0, val_data=val, patience=2, progress=False)
    best = history.best_epoch
    assert history.stopped_early and best is not None and best < len(history.val_loss) - 1
    with torch.no_grad():
        assert -model.log_prob(val).mean().item() == pytest.approx(history.val_loss[best], rel=1e-6)
