"""The default optimizer of fit (fused Adam) and its warm-up."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pyro_flows import FlowModel
from pyro_flows.training import adam, linear_warmup


def test_linear_warmup_values():
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched, lrs = linear_warmup(opt, 4), []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=2.0)
    linear_warmup(opt, 0)
    assert opt.param_groups[0]["lr"] == 2.0
    with pytest.raises(ValueError, match="warmup_steps"):
        linear_warmup(opt, -1)


def test_adam_is_fused_only_where_torch_has_the_kernel():
    assert adam([nn.Parameter(torch.zeros(2))], 1e-3).defaults["fused"]
    complex_ = adam([nn.Parameter(torch.zeros(2, dtype=torch.complex64))], 1e-3)
    assert not complex_.defaults["fused"]


def _glow_step(model, optimizer, x):
    optimizer.zero_grad()
    (-model.log_prob(x).mean()).backward()
    optimizer.step()


def test_adam_loads_state_of_another_layout_and_stays_fused():
    """torch's fused Adam reads state laid out unlike its weight as the wrong elements; a state
    saved unfused from NCHW weights must resume exactly like the unfused optimizer would."""
    torch.manual_seed(0)
    x = torch.rand(8, 1, 8, 8)
    model = FlowModel.build("glow", (1, 8, 8), levels=1, steps=2, hidden_channels=8)
    unfused = torch.optim.Adam(model.parameters(), lr=1e-2)
    _glow_step(model, unfused, x)
    _glow_step(model, unfused, x)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved = copy.deepcopy(unfused.state_dict())
    for state in saved["state"].values():  # as written before the conv weights went channels-last
        for name, value in state.items():
            state[name] = value.contiguous()
    assert any(not p.is_contiguous() for p in model.parameters())

    _glow_step(model, unfused, x)
    expected = [p.detach().clone() for p in model.parameters()]
    model.load_state_dict(saved_model)
    resumed = adam(list(model.parameters()), 1e-2)
    resumed.load_state_dict(saved)
    assert all(g["fused"] for g in resumed.param_groups)
    _glow_step(model, resumed, x)
    for p, q in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)
