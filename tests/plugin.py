"""A transform written by a plugin author from the "write your own transform" page alone: it
subclasses :class:`pyro_flows.transforms.Bijector`, implements the two public protocol methods
and registers itself. The contract test runs over it like over every built-in."""

from __future__ import annotations

import torch
from torch import nn

import pyro_flows
from pyro_flows.transforms import Bijector


class ElementwiseSinh(Bijector):
    """``y = a * sinh(x) + b * x + c`` per element with ``a >= 0`` and ``b > 0``: monotone, so
    invertible; the inverse is found by Newton's method."""

    def __init__(self, event_shape: tuple[int, ...]) -> None:
        super().__init__(event_dim=len(event_shape))
        self.event_shape = tuple(event_shape)
        self.raw_a = nn.Parameter(torch.full(self.event_shape, -2.0))
        self.raw_b = nn.Parameter(torch.zeros(self.event_shape))
        self.c = nn.Parameter(torch.zeros(self.event_shape))

    def _coefficients(self):
        return nn.functional.softplus(self.raw_a), torch.exp(self.raw_b)

    def _ladj(self, x, a, b):
        return torch.log(a * torch.cosh(x) + b).flatten(x.dim() - self.event_dim).sum(-1)

    def call_and_ladj(self, x, context=None):
        a, b = self._coefficients()
        return a * torch.sinh(x) + b * x + self.c, self._ladj(x, a, b)

    def inverse_and_ladj(self, y, context=None):
        a, b = self._coefficients()
        x = (y - self.c) / (a + b)
        for _ in range(60):  # Newton on a convex-concave monotone map converges from here
            x = x - (a * torch.sinh(x) + b * x + self.c - y) / (a * torch.cosh(x) + b)
        return x, self._ladj(x, a, b)


@pyro_flows.register("test_plugin_sinh", replace=True)
def build_sinh(event_shape, **kwargs) -> ElementwiseSinh:
    return ElementwiseSinh(event_shape, **kwargs)
