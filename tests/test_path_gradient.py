"""AutoFlow's path-derivative ELBO gradient ("sticking the landing"): zero, draw by draw, at the
exact posterior; the ordinary gradient there is not; the ELBO's value is unchanged."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import init_to_value

from pyro_flows.infer import AutoFlow


def standard_normal():
    pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))


pytestmark = pytest.mark.usefixtures("fresh_pyro")


def one_draw_gradient(path_gradient: bool):
    """ELBO loss and its gradient for one draw of a guide that starts at the exact posterior."""
    guide = AutoFlow(standard_normal, num_layers=2, hidden_dims=(8, 8), init_scale=1.0,
                     init_loc_fn=init_to_value(values={"z": torch.zeros(3)}),
                     path_gradient=path_gradient)
    guide()  # build the parameters
    # softplus_positive stores scale approximately; pin it to exactly 1 for an exact posterior.
    with torch.no_grad():
        guide.scale = torch.ones(3)
    pyro.set_rng_seed(1)
    loss = Trace_ELBO().differentiable_loss(standard_normal, guide)
    params = [guide.loc, guide.scale_unconstrained, *guide.flow.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss, [g for g in grads if g is not None]


def test_path_gradient_vanishes_at_the_exact_posterior():
    loss, grads = one_draw_gradient(path_gradient=True)
    assert abs(float(loss.detach())) < 1e-5  # q = p: every draw's log-weight is zero
    assert max(float(g.abs().max()) for g in grads) < 1e-5


def test_full_gradient_is_noise_at_the_exact_posterior():
    loss, grads = one_draw_gradient(path_gradient=False)
    assert abs(float(loss.detach())) < 1e-5
    assert max(float(g.abs().max()) for g in grads) > 1e-2


def test_other_values_keep_the_full_log_density_gradient():
    guide = AutoFlow(standard_normal, num_layers=2, hidden_dims=(8, 8), path_gradient=True)
    guide()
    posterior = guide.get_posterior()
    drawn = posterior.rsample((4,))
    given = drawn.detach().clone()
    torch.testing.assert_close(posterior.log_prob(drawn), posterior.log_prob(given))
    (grad,) = torch.autograd.grad(posterior.log_prob(given).sum(), guide.loc)
    assert grad.abs().max() > 0  # fitting q to given values still trains it


@pytest.mark.parametrize("flow, expected", [("realnvp", True), ("nice", True), ("glow", False)])
def test_path_gradient_is_on_by_default_except_for_glow(flow, expected):
    from pyro_flows.infer.path_gradient import PathGradientPosterior

    guide = AutoFlow(standard_normal, flow, num_layers=2, hidden_dims=(8, 8))
    guide()
    assert isinstance(guide.get_posterior(), PathGradientPosterior) is expected
    off = AutoFlow(standard_normal, flow, num_layers=2, hidden_dims=(8, 8), path_gradient=False)
    off()
    assert not isinstance(off.get_posterior(), PathGradientPosterior)
