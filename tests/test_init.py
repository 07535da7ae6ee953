"""``pyro_flows.initialize``: Glow's data-dependent initialization as one explicit act."""

from __future__ import annotations

import io

import pyro.distributions as dist
import pytest
import torch

import pyro_flows
from pyro_flows.transforms import ActNorm

F64 = torch.float64


def vector_data(n: int = 500, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([5.0, -2.0, 0.0], dtype=F64) + torch.tensor(
        [3.0, 0.1, 1.0], dtype=F64) * torch.randn(n, 3, generator=g, dtype=F64)


def image_data(n: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    loc = torch.tensor([1.0, -4.0], dtype=F64)[:, None, None]
    scale = torch.tensor([0.5, 7.0], dtype=F64)[:, None, None]
    return loc + scale * torch.randn(n, 2, 3, 5, generator=g, dtype=F64)


def per_channel(z: torch.Tensor) -> torch.Tensor:
    return z.transpose(0, 1).reshape(z.shape[1], -1).T


def assert_standardized(flat: torch.Tensor) -> None:
    assert torch.allclose(flat.mean(0), torch.zeros(flat.shape[1], dtype=F64), atol=1e-10, rtol=0)
    var = flat.var(0, unbiased=False)
    assert torch.allclose(var, torch.ones_like(var), atol=1e-10, rtol=0)


def test_initialize_standardizes_each_feature_and_returns_the_layer():
    t = ActNorm(3).double()
    assert pyro_flows.initialize(t, vector_data()) is t
    assert bool(t.initialized)
    assert_standardized(t.inv(vector_data()))


def test_initialize_standardizes_each_channel_of_an_image():
    t = pyro_flows.initialize(ActNorm((2, 3, 5)).double(), image_data())
    assert_standardized(per_channel(t.inv(image_data())))


def test_every_layer_of_a_deep_flow_sees_normalized_inputs():
    """Each ActNorm normalizes the data as it reaches it, after the layers before it."""
    flow = pyro_flows.build("glow", event_shape=(3,), num_layers=3, hidden_dims=(8,)).double()
    from helpers import perturb
    perturb(flow, 0.3, seed=2)
    x = vector_data()
    pyro_flows.initialize(flow, x)
    h = x
    for part in reversed(flow.parts):
        if isinstance(part, ActNorm):
            assert_standardized(part.inv(h))
        h = part.inv(h)


def test_initialize_a_flow_model_through_its_log_prob():
    model = pyro_flows.FlowModel.build("glow", (1, 4, 4), data_levels=17, levels=1, steps=2,
                                       hidden_channels=8)
    data = torch.randint(0, 17, (64, 1, 4, 4)).float()
    pyro_flows.initialize(model, data)
    norms = [m for m in model.modules() if isinstance(m, ActNorm)]
    assert norms and all(bool(m.initialized) for m in norms)
    assert any(m.loc.abs().sum() > 0 for m in norms)


def test_initialize_a_conditional_flow_needs_the_context():
    flow = pyro_flows.build("conditional_glow", event_shape=(3,), context_dim=2, num_layers=2)
    with pytest.raises(ValueError, match="context="):
        pyro_flows.initialize(flow, torch.randn(10, 3))
    pyro_flows.initialize(flow, torch.randn(10, 3) * 5, context=torch.randn(10, 2))
    assert all(bool(m.initialized) for m in flow.modules() if isinstance(m, ActNorm))


def test_a_second_call_leaves_initialized_layers_alone_unless_forced():
    t = pyro_flows.initialize(ActNorm(3).double(), vector_data(seed=0))
    loc = t.loc.detach().clone()
    pyro_flows.initialize(t, 10 + vector_data(seed=1))
    assert torch.equal(t.loc, loc)
    pyro_flows.initialize(t, 10 + vector_data(seed=1), force=True)
    assert not torch.equal(t.loc, loc)


def test_zero_variance_feature_keeps_unit_scale():
    x = vector_data().clone()
    x[:, 1] = 7.0
    t = pyro_flows.initialize(ActNorm(3).double(), x)
    z = t.inv(x)
    assert torch.isfinite(z).all() and torch.equal(z[:, 1], torch.zeros(500, dtype=F64))


def test_initialization_is_accurate_for_float32_data_far_from_zero():
    g = torch.Generator().manual_seed(0)
    x = 1000 + torch.randn(1000, 2, generator=g)
    z = pyro_flows.initialize(ActNorm(2), x).inv(x)
    assert (z.std(0, unbiased=False) - 1).abs().max() < 1e-3


def test_wrong_shape_is_refused_and_nothing_changes():
    t = ActNorm(3)
    with pytest.raises(ValueError, match=r"\(3,\).*\(10, 4\)"):
        pyro_flows.initialize(t, torch.randn(10, 4))
    assert not bool(t.initialized) and t.statistics is None


def test_a_module_without_log_prob_is_refused():
    with pytest.raises(TypeError, match="log_prob"):
        pyro_flows.initialize(torch.nn.Sequential(ActNorm(3)), torch.randn(4, 3))


def test_reloaded_checkpoint_is_not_initialized_again():
    trained = pyro_flows.initialize(
        pyro_flows.build("glow", event_shape=(3,), num_layers=2, hidden_dims=(8,)).double(),
        vector_data(seed=0))
    buf = io.BytesIO()
    torch.save(trained.state_dict(), buf)
    buf.seek(0)
    fresh = pyro_flows.build("glow", event_shape=(3,), num_layers=2, hidden_dims=(8,)).double()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    pyro_flows.initialize(fresh, vector_data(seed=1) * 4)
    base = dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1)
    x = vector_data(seed=2)
    assert torch.equal(dist.TransformedDistribution(base, fresh).log_prob(x),
                       dist.TransformedDistribution(base, trained).log_prob(x))


def test_a_guide_flow_is_never_initialized_by_sampling():
    flow = pyro_flows.build("glow", event_shape=(3,), num_layers=2)
    base = dist.Normal(torch.zeros(3), 1.0).to_event(1)
    d = dist.TransformedDistribution(base, flow)
    d.log_prob(d.sample((100,)))
    assert not any(bool(m.initialized) for m in flow.modules() if isinstance(m, ActNorm))
