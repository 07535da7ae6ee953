"""NICE's diagonal scaling layer: the only volume change in a NICE flow."""

from __future__ import annotations

import torch
from torch import nn

from .base import Bijector
from .shapes import as_event_shape, check_event_shape

__all__ = ["Scaling", "scaling"]


class Scaling(Bijector):
    """``y = x * exp(log_scale)`` elementwise, log-det ``sum(log_scale)``; starts as the identity.

    Dinh, Krueger & Bengio, "NICE: Non-linear Independent Components Estimation", ICLR 2015,
    section 3.3: additive couplings preserve volume, so this layer carries the density's scale.

    :param event_shape: ``D``/``(D,)`` or ``(C, H, W)``; one scale per element.

    >>> import torch
    >>> t = Scaling(2)
    >>> t.log_abs_det_jacobian(torch.zeros(2), t(torch.zeros(2)))
    tensor(0., grad_fn=<ExpandBackward0>)
    """

    def __init__(self, event_shape) -> None:
        self.event_shape = as_event_shape(event_shape)
        super().__init__(event_dim=len(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def _ladj(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_scale.sum().expand(x.shape[: x.dim() - len(self.event_shape)])

    def call_and_ladj(self, x: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, x, self.event_shape)
        return x * torch.exp(self.log_scale), self._ladj(x)

    def inverse_and_ladj(self, y: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, y, self.event_shape)
        return y * torch.exp(-self.log_scale), self._ladj(y)


def scaling(input_dim: int | tuple[int, ...]) -> Scaling:
    """Factory for :class:`Scaling` (Pyro style): ``input_dim`` is ``D`` or ``(C, H, W)``."""
    return Scaling(input_dim)
