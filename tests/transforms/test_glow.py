"""Behaviour of the multi-scale Glow: shapes and levels, the identity start (a pure permutation
of the pixels), the split priors, the context, and no stale cache after an optimizer step."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from pyro_flows.nn import soft_clamp
from pyro_flows.transforms import ConditionalGlow, Glow, InvertibleConv1x1, MultiScaleFlow
from pyro_flows.transforms.multiscale import PRIOR_SCALE_BOUND

from helpers import perturb

F64 = torch.float64
SMALL = {"steps": 2, "hidden_channels": 4}



def standard_normal(shape: tuple[int, ...]) -> dist.Distribution:
    return dist.Normal(torch.zeros(shape, dtype=F64), 1.0).to_event(len(shape))


def with_identity_convs(module: torch.nn.Module) -> torch.nn.Module:
    """Make every 1x1 convolution the identity matrix (including the LU's fixed P and signs)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, InvertibleConv1x1):
                m.lower.zero_()
                m.upper.zero_()
                m.log_diag.zero_()
                m.permutation.copy_(torch.arange(len(m.permutation)))
                m.diag_sign.fill_(1.0)
    return module


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_latent_has_the_shape_of_the_data(batch):
    g = perturb(Glow((2, 8, 4), levels=2, **SMALL).double())
    x = torch.randn(*batch, 2, 8, 4, dtype=F64)
    z = g.inv(x)
    assert z.shape == x.shape
    assert g.log_abs_det_jacobian(z, x).shape == batch
    assert g(z).shape == x.shape


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_one_split_prior_between_consecutive_levels(levels):
    g = Glow((1, 8, 8), levels=levels, steps=1, hidden_channels=4)
    assert len(g.levels) == levels
    assert len(g.priors) == levels - 1
    # Each split hands half of the elements to its prior; the top level keeps the rest.
    c, h, w = g.top_shape
    assert c * h * w == 64 // 2 ** (levels - 1)


def test_default_levels_follow_the_shape():
    assert len(Glow((1, 4, 4), steps=1, hidden_channels=4).levels) == 2
    assert len(Glow((1, 32, 32), steps=1, hidden_channels=4).levels) == 3


@pytest.mark.parametrize("shape,levels", [((1, 8, 8), 4), ((1, 8, 12), 3), ((1, 8, 8), 0)])
def test_too_many_levels_are_rejected_naming_the_shape(shape, levels):
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        Glow(shape, levels=levels, steps=1)


@pytest.mark.parametrize("shape", [(1, 7, 8), (3, 8, 5)])
def test_odd_shape_is_rejected_naming_the_shape(shape):
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        Glow(shape, steps=1)


def test_inputs_of_the_wrong_shape_are_rejected():
    g = Glow((1, 8, 8), levels=2, steps=1, hidden_channels=4)
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(2, 1, 8, 4\)"):
        g.inv(torch.zeros(2, 1, 8, 4))


@pytest.mark.parametrize("step_type", ["glow", "realnvp", "nice"])
def test_zero_initialized_glow_is_exactly_the_identity(step_type):
    g = MultiScaleFlow((2, 8, 8), kind=step_type, levels=3, **SMALL).double()
    with_identity_convs(g)
    x = torch.randn(3, 2, 8, 8, dtype=F64)
    z = g.inv(x)
    # The latent reassembles the split-off halves by undoing the squeezes, so the permutation
    # that squeezing and splitting make is undone too: the whole model is exactly the identity.
    assert torch.equal(z, x)
    assert torch.equal(g.log_abs_det_jacobian(z, x), torch.zeros(3, dtype=F64))
    assert torch.equal(g.with_cache(0)(z), x)


def test_split_prior_changes_the_density():
    g = Glow((1, 8, 8), levels=2, **SMALL).double()
    with_identity_convs(g)
    d = dist.TransformedDistribution(standard_normal((1, 8, 8)), [g])
    x = torch.randn(4, 1, 8, 8, dtype=F64)
    lp = d.log_prob(x)
    prior = g.priors[0]
    half = prior.out_channels // 2
    with torch.no_grad():
        prior.bias[:half] += 0.5  # the mean of the split-off half
    lp_loc = d.log_prob(x)
    with torch.no_grad():
        prior.bias[:half] -= 0.5
        prior.bias[half:] += 0.5  # its log-scale
    lp_scale = d.log_prob(x)
    assert not torch.allclose(lp_loc, lp) and not torch.allclose(lp_scale, lp)
    # At zero data the 32 split-off elements stay at zero and each pays its (bounded) log-scale.
    zero = torch.zeros(1, 8, 8, dtype=F64)
    log_scale = soft_clamp(torch.tensor(0.5, dtype=F64), PRIOR_SCALE_BOUND)
    expected = standard_normal((1, 8, 8)).log_prob(zero) - 32 * log_scale
    assert torch.allclose(d.log_prob(zero), expected, atol=1e-12, rtol=0)


def _conditional(part: str) -> ConditionalGlow:
    """A zero-initialized ConditionalGlow with only ``part``'s parameters perturbed, so that the
    context can only act through that part."""
    cg = ConditionalGlow((1, 8, 8), context_dim=2, levels=2, **SMALL).double()
    owners = {"couplings": cg.flow.levels, "split priors": cg.flow.priors,
              "top prior": cg.flow.top_context}
    perturb(owners[part], scale=0.5)
    return cg


@pytest.mark.parametrize("part", ["couplings", "split priors", "top prior"])
def test_context_reaches_the_density_through_every_part(part):
    cg = _conditional(part)
    x = torch.randn(4, 1, 8, 8, dtype=F64)
    c1, c2 = torch.randn(2, 2, dtype=F64)
    lp1 = dist.ConditionalTransformedDistribution(standard_normal((1, 8, 8)), [cg]).condition(c1)
    lp2 = dist.ConditionalTransformedDistribution(standard_normal((1, 8, 8)), [cg]).condition(c2)
    assert not torch.allclose(lp1.log_prob(x), lp2.log_prob(x))


def test_conditional_glow_broadcasts_one_context_over_a_batch():
    cg = perturb(ConditionalGlow((1, 4, 4), context_dim=2, levels=2,
                                                **SMALL).double())
    x = torch.randn(5, 1, 4, 4, dtype=F64)
    c = torch.randn(2, dtype=F64)
    z = cg.condition(c).inv(x)
    rows = torch.stack([cg.condition(c).inv(x[i]) for i in range(5)])
    assert torch.allclose(z, rows, atol=1e-12, rtol=0)


def _sgd_step(module: torch.nn.Module, loss: torch.Tensor) -> None:
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_sampling_direction_is_recomputed_after_an_optimizer_step():
    """Pyro issue 2564: a cached output must not survive a parameter update."""
    g = perturb(Glow((1, 4, 4), levels=2, **SMALL).double())
    x = torch.randn(3, 1, 4, 4, dtype=F64)
    y1 = g(x)
    _sgd_step(g, y1.square().sum())
    y2 = g(x)
    assert not torch.allclose(y2, y1)
    assert torch.equal(y2, g.with_cache(0)(x.clone()))


def test_log_prob_after_an_optimizer_step_matches_a_fresh_copy():
    def make():
        return Glow((1, 4, 4), levels=2, **SMALL).double()

    g = perturb(make())
    d = dist.TransformedDistribution(standard_normal((1, 4, 4)), [g])
    x = torch.randn(6, 1, 4, 4, dtype=F64)
    before = d.log_prob(x)  # also the data-dependent ActNorm initialization
    _sgd_step(g, -before.mean())
    after = d.log_prob(x)
    fresh = make()
    fresh.load_state_dict(g.state_dict())
    expected = dist.TransformedDistribution(standard_normal((1, 4, 4)), [fresh]).log_prob(x.clone())
    assert not torch.allclose(after, before)
    assert torch.allclose(after, expected, atol=1e-12, rtol=0)


def test_input_overwritten_in_place_is_recomputed():
    g = perturb(Glow((1, 4, 4), levels=2, **SMALL).double())
    buffer = torch.randn(3, 1, 4, 4, dtype=F64)
    g(buffer)
    buffer.copy_(torch.randn(3, 1, 4, 4, dtype=F64))
    assert torch.equal(g(buffer), g.with_cache(0)(buffer.clone()))
