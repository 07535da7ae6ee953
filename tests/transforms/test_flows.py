"""Behaviour of the composed vector flows: every coordinate is transformed, the parts sit where
the design puts them, and the conditional flows use their context."""

from __future__ import annotations

import pyro.distributions as dist

import pyro_flows
import pytest
import torch

from pyro_flows.transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ConditionalBijector,
    InvertibleLinear,
    Permutation,
    Scaling,
    conditional_vector_flow,
    vector_flow,
)

from helpers import perturb

F64 = torch.float64
KINDS = ["nice", "realnvp", "glow"]




def perturb_couplings(flow) -> None:
    """Only the couplings move, so that in NICE and RealNVP a coordinate changes only if some
    coupling transforms it (a perturbed scaling would touch everything by itself)."""
    for i, part in enumerate(flow.parts):
        if isinstance(part, (AdditiveCoupling, AffineCoupling)):
            perturb(part, 0.5, seed=i)


@pytest.mark.parametrize("num_layers", [2, 3, 4])
@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("kind", KINDS)
def test_every_coordinate_is_transformed(kind, dim, num_layers):
    flow = vector_flow(kind, dim, num_layers=num_layers, hidden_dims=(16,)).double()
    perturb_couplings(flow)
    x = torch.randn(dim, dtype=F64)
    y = flow(x)
    assert (y != x).all()
    jac = torch.autograd.functional.jacobian(flow, x)
    eye = torch.eye(dim, dtype=F64)
    for i in range(dim):
        assert not torch.allclose(jac[i], eye[i], atol=1e-8), f"coordinate {i} passes unchanged"


def test_nice_scaling_sits_next_to_the_base():
    flow = vector_flow("nice", 4, num_layers=3)
    scalings = [i for i, p in enumerate(flow.parts) if isinstance(p, Scaling)]
    assert scalings == [0]
    assert {type(p) for p in flow.parts[1:]} == {AdditiveCoupling, Permutation}


def test_nice_scaling_carries_the_volume_change():
    flow = perturb(vector_flow("nice", 4, num_layers=3, hidden_dims=(8,)).double(), 0.5)
    x = torch.randn(5, 4, dtype=F64)
    y = flow(x)
    expected = flow.parts[0].log_scale.sum().expand(5)
    assert torch.allclose(flow.log_abs_det_jacobian(x, y), expected, atol=1e-12, rtol=0)


def test_glow_layers_end_with_actnorm_at_the_data_end():
    flow = vector_flow("glow", 4, num_layers=3, hidden_dims=(8,))
    kinds = [type(p) for p in flow.parts]
    assert kinds == [AffineCoupling, InvertibleLinear, ActNorm] * 3
    assert isinstance(flow.parts[-1], ActNorm)


def test_glow_data_end_actnorm_initializes_on_the_data():
    flow = vector_flow("glow", 3, num_layers=2, hidden_dims=(8,)).double()
    x = torch.tensor([4.0, -1.0, 0.5], dtype=F64) + torch.tensor(
        [2.0, 0.3, 1.0], dtype=F64) * torch.randn(400, 3, dtype=F64)
    base = dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1)
    pyro_flows.initialize(flow, x)
    dist.TransformedDistribution(base, flow).log_prob(x)
    last = flow.parts[-1]
    assert torch.allclose(last.loc, x.mean(0), atol=1e-10, rtol=0)
    assert torch.allclose(last.log_scale.exp(), x.std(0, unbiased=False), atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind,num_layers", [("ode", 2), ("nice", 0)])
def test_bad_arguments_are_rejected(kind, num_layers):
    with pytest.raises(ValueError, match=kind if num_layers else "num_layers"):
        vector_flow(kind, 4, num_layers=num_layers)


@pytest.mark.parametrize("kind", KINDS)
def test_conditional_flows_use_the_context(kind):
    flow = conditional_vector_flow(kind, 4, context_dim=2, num_layers=2, hidden_dims=(16,)).double()
    perturb(flow, 0.5)
    assert isinstance(flow, ConditionalBijector)
    assert sum(p.context_dim == 2 for p in flow.flow.parts if hasattr(p, "context_dim")) == 2
    x = torch.randn(3, 4, dtype=F64)
    c1, c2 = torch.randn(2, 2, dtype=F64)
    y1, y2 = flow.condition(c1)(x), flow.condition(c2)(x)
    assert not torch.allclose(y1, y2)
    base = dist.Normal(torch.zeros(4, dtype=F64), 1.0).to_event(1)
    d = dist.ConditionalTransformedDistribution(base, [flow])
    assert not torch.allclose(d.condition(c1).log_prob(x), d.condition(c2).log_prob(x))
    # A batch of contexts gives each row its own transform.
    both = flow.condition(torch.stack([c1, c2]))(x[:1].expand(2, 4))
    assert torch.allclose(both, torch.cat([y1[:1], y2[:1]]), atol=1e-12, rtol=0)


def test_conditioning_a_flow_built_without_that_context_is_refused():
    """A flow built without a context would ignore one, and one built for another context size
    would fail deep inside its networks: both are named at construction, with the fix."""
    from pyro_flows.transforms import Glow
    with pytest.raises(ValueError, match="built without a context.*context_dim=3"):
        ConditionalBijector(pyro_flows.transforms.realnvp(4), 3)
    with pytest.raises(ValueError, match="built without a context"):
        ConditionalBijector(Glow((1, 4, 4), levels=1, steps=1, hidden_channels=4), 3)
    with pytest.raises(ValueError, match="context of size 2.*context_dim=3"):
        ConditionalBijector(pyro_flows.transforms.conditional_realnvp(4, 2).flow, 3)
    flow = ConditionalBijector(pyro_flows.transforms.conditional_realnvp(4, 3).flow, 3)
    assert flow.condition(torch.zeros(3)).inv(torch.randn(5, 4)).shape == (5, 4)
