"""EMA: the average, its warm-up, evaluation with averaged weights, state_dict round trips."""

from __future__ import annotations

import pytest
import torch

from pyro_flows import FlowModel, initialize
from pyro_flows.ema import EMA


def test_update_follows_the_formula_with_warm_up():
    net = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in net.parameters()]
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)  # n = 0: d = min(0.5, 1 / 10) = 0.1
    ema.update(net)  # n = 1: d = min(0.5, 2 / 11)
    d0, d1 = 0.1, 2 / 11
    for s, p, p0 in zip(ema.shadow.values(), net.parameters(), start):
        first = d0 * p0 + (1 - d0) * p
        torch.testing.assert_close(s, d1 * first + (1 - d1) * p)
    assert ema.num_updates == 2


def test_average_weights_swaps_in_and_restores_even_on_error():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, decay=0.9)
    own = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for s in ema.shadow.values():
            s.fill_(7.0)
    with ema.average_weights(net):
        assert all((p == 7.0).all() for p in net.parameters())
    with pytest.raises(KeyError), ema.average_weights(net):
        raise KeyError("inside")
    for p, q in zip(net.parameters(), own):
        torch.testing.assert_close(p, q)


def test_state_dict_round_trip_through_weights_only_load(tmp_path):
    model = FlowModel.build("glow", (1, 8, 8), data_levels=17, levels=2, steps=1,
                            hidden_channels=8)
    initialize(model, torch.randint(0, 17, (16, 1, 8, 8)).float())
    ema = EMA(model, decay=0.99)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    ema.update(model)
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    other = EMA(model, decay=0.5)
    other.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    assert (other.decay, other.num_updates) == (0.99, 1)
    for name, s in ema.shadow.items():
        torch.testing.assert_close(other.shadow[name], s)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="decay"):
        EMA(torch.nn.Linear(2, 2), decay=1.0)
    ema = EMA(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="another model"):
        ema.update(torch.nn.Conv2d(2, 2, 1, bias=False))
    with pytest.raises(ValueError, match="shape"):
        ema.load_state_dict(EMA(torch.nn.Linear(3, 2)).state_dict())
