"""A flow guide's posterior whose ELBO gradient is the path derivative alone ("sticking the
landing", Roeder, Wu & Duvenaud, NeurIPS 2017).

The reparameterized ELBO gradient of a guide ``q_theta`` has two parts: the path through the
draw ``z = f_theta(eps)`` and the score ``d/dtheta log q_theta(z)`` at fixed ``z``. The score
has expectation zero, so dropping it leaves the gradient unbiased, but it does not vanish when
``q`` is the posterior: it is pure noise at the optimum. Without it, the gradient of a guide that
fits goes to zero draw by draw, so the last iterates of SVI stop jittering and their spread is
the posterior's. Only the guide's own draw is scored so; any other value gets the ordinary
log-density (with its full gradient). The price is one inverse pass of the flow per step.

Unbiased for the ELBO (``Trace_ELBO`` and its Jit and vectorized forms). Importance-weighted
objectives (``RenyiELBO``, ``TraceTailAdaptive_ELBO``) need the score term: pass
``path_gradient=False`` to :class:`~pyro_flows.infer.AutoFlow` for them.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.func import functional_call

from ..transforms import Chain

__all__ = ["PathGradientPosterior"]


class _Inverse(nn.Module):
    """``flow.inverse_and_ladj`` as a module's forward, for :func:`torch.func.functional_call`."""

    def __init__(self, flow: Chain) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z: torch.Tensor):
        return self.flow.inverse_and_ladj(z)


class PathGradientPosterior(dist.TransformedDistribution):
    """``z = flow(loc + scale * eps)``, ``eps ~ base``; the log-density of its own last draw
    carries the path derivative only (see the module's docstring).

    :param base: the standard normal base, event dim 1.
    :param loc: the affine step's shift (a parameter).
    :param scale: the affine step's scale (positive).
    :param flow: the guide's flow, a :class:`~pyro_flows.transforms.Chain`.

    >>> import torch, pyro.distributions as dist
    >>> from pyro_flows.infer import build_guide_flow
    >>> loc = torch.zeros(2, requires_grad=True)
    >>> q = PathGradientPosterior(dist.Normal(torch.zeros(2), 1.0).to_event(1), loc,
    ...                           torch.ones(2), build_guide_flow("realnvp", 2))
    >>> z = q.rsample((5,))
    >>> torch.allclose(q.log_prob(z), q.log_prob(z.clone()))  # same values, other gradients
    True
    """

    def __init__(self, base: dist.TorchDistribution, loc: torch.Tensor, scale: torch.Tensor,
                 flow: Chain) -> None:
        # Cached affine: the ordinary log_prob of a draw finds every intermediate value cached.
        affine = dist.transforms.AffineTransform(loc, scale, event_dim=1, cache_size=1)
        super().__init__(base, [affine, *flow.parts])
        self._loc, self._scale, self._flow = loc, scale, flow
        self._drawn: torch.Tensor | None = None

    def expand(self, batch_shape, _instance=None) -> "PathGradientPosterior":
        """The same posterior with batch shape ``batch_shape``."""
        # The base and the result share their event shape, so they share the batch shape.
        base = self.base_dist.expand(torch.Size(batch_shape))
        return PathGradientPosterior(base, self._loc, self._scale, self._flow)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        z = super().rsample(sample_shape)
        self._drawn = z
        return z

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value is not self._drawn or not torch.is_grad_enabled():
            return super().log_prob(value)
        # The same log-density with every guide parameter frozen: gradients reach the
        # parameters only through the draw itself.
        frozen = {"flow." + name: p.detach() for name, p in self._flow.named_parameters()}
        u, ladj = functional_call(_Inverse(self._flow), frozen, (value,))
        scale = self._scale.detach()
        eps = (u - self._loc.detach()) / scale
        return self.base_dist.log_prob(eps) - ladj - scale.log().sum(-1)
