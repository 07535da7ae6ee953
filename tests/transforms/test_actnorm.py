"""ActNorm as a transform: the identity (or given statistics) until initialized on purpose, and
no call of it ever changes its parameters."""

from __future__ import annotations

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


def test_a_new_layer_is_the_identity_in_both_directions():
    t = ActNorm(3).double()
    x = vector_data()
    assert not bool(t.initialized)
    assert torch.equal(t.inv(x), x) and torch.equal(t(x), x)
    assert torch.equal(t.log_abs_det_jacobian(x, x), torch.zeros(500, dtype=F64))


@pytest.mark.parametrize("direction", ["forward", "inverse", "log_prob", "sample"])
def test_no_call_changes_the_parameters(direction):
    """The old layer initialized itself inside its first data-direction call (issue 9)."""
    t = ActNorm(3).double()
    before = {k: v.clone() for k, v in t.state_dict().items()}
    x = vector_data()
    base = dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1)
    d = dist.TransformedDistribution(base, [t])
    {"forward": lambda: t(x), "inverse": lambda: t.inv(x), "log_prob": lambda: d.log_prob(x),
     "sample": lambda: d.sample((50,))}[direction]()
    for k, v in t.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_given_statistics_normalize_that_data():
    x = vector_data()
    t = ActNorm(3, mean=x.mean(0), std=x.std(0)).double()
    assert bool(t.initialized)
    z = t.inv(x)
    assert torch.allclose(z.mean(0), torch.zeros(3, dtype=F64), atol=1e-6)
    assert torch.allclose(z.std(0), torch.ones(3, dtype=F64), atol=1e-6)


def test_given_statistics_must_be_positive():
    with pytest.raises(ValueError, match="std must be positive"):
        ActNorm(2, std=torch.tensor([1.0, 0.0]))


def test_image_layer_has_one_scale_per_channel_and_counts_every_pixel():
    t = pyro_flows.initialize(ActNorm((2, 3, 5)).double(), torch.randn(40, 2, 3, 5, dtype=F64) * 3)
    assert t.loc.shape == (2, 1, 1)
    x = torch.randn(4, 2, 3, 5, dtype=F64)
    y = t(x)
    assert torch.allclose(t.log_abs_det_jacobian(x, y), (15 * t.log_scale.sum()).expand(4))


def test_checkpoint_loaded_with_assign_is_used_on_the_next_call():
    t = ActNorm(3).double()
    x = torch.randn(4, 3, dtype=F64)
    t(x)
    checkpoint = {"loc": torch.ones(3, dtype=F64), "log_scale": torch.zeros(3, dtype=F64),
                  "initialized": torch.tensor(True)}
    t.load_state_dict(checkpoint, assign=True)
    assert torch.equal(t(x), x + 1)
