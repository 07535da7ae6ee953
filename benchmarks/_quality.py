"""The quality check beside the speed figures: how far the log-det a flow reports under autocast
is from the log-det of the map it actually computed.

The reference is exact: a float64 copy of the flow in which every ``Linear`` / ``Conv2d`` (and
every pyro-flows ``ConvNet`` as a whole) returns the very value its float32 counterpart returned
under autocast (straight-through gradients), so the copy computes the same map with float64 arithmetic, and autograd's Jacobian of it, with its
determinant taken in float64, is that map's log-det. A flow that keeps its log-det in float32
(``pyro_flows.precision``) lands within float32 rounding of it; autocast applied naively to
another flow rounds the log-scales and their sum to bfloat16.

>>> import torch, pyro_flows
>>> flow = pyro_flows.build("realnvp", (4,), num_layers=2)
>>> logdet_error(flow, torch.randn(2, 4)) < 1e-4
True
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import pyro_flows

__all__ = ["logdet_error"]

# pyro-flows' ConvNet on a small image computes with its layers' weights without calling them.
_LAYERS = (nn.Linear, nn.Conv2d, pyro_flows.nn.ConvNet)


def logdet_error(flow, x: torch.Tensor, precision: str = "bf16-mixed", examples: int = 2) -> float:
    """Largest ``|reported - exact|`` log-det (nats) of the data -> base map of ``flow`` (a torch
    ``Transform`` that is also an ``nn.Module``, base -> data) over the first ``examples``
    rows of ``x``, computed under ``autocast(precision)``."""
    worst = 0.0
    for row in x[:examples]:
        row = row[None]
        seen: dict[str, torch.Tensor] = {}
        hooks = [m.register_forward_hook(lambda m, i, out, n=n: seen.__setitem__(n, out.detach()))
                 for n, m in flow.named_modules() if isinstance(m, _LAYERS)]
        with torch.no_grad(), pyro_flows.precision.autocast(precision, row.device):
            z = flow.inv(row.clone())
            reported = -flow.log_abs_det_jacobian(z, row).double().sum()
        for h in hooks:
            h.remove()
        twin = copy.deepcopy(flow).double()
        for n, m in twin.named_modules():
            if isinstance(m, _LAYERS):
                m.register_forward_hook(
                    lambda m, i, out, n=n: out + (seen[n].double().reshape(out.shape) - out).detach())
        inverse = twin.inv
        jac = torch.autograd.functional.jacobian(
            lambda v: inverse(v.reshape(row.shape)).reshape(-1), row.double().reshape(-1))
        exact = torch.linalg.slogdet(jac)[1]
        worst = max(worst, abs(reported - exact).item())
    return worst
