"""Activation normalization (Glow): a per-feature (vectors) or per-channel (images) affine map,
the identity until it is initialized on purpose from data (:func:`pyro_flows.initialize`)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .base import Bijector
from .shapes import as_event_shape, check_event_shape

__all__ = ["ActNorm", "actnorm"]

# ``(layer, y) -> (loc, log_scale)``: statistics of the data reaching ``layer``.
Statistics = Callable[["ActNorm", torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class ActNorm(Bijector):
    """``y = x * exp(log_scale) + loc`` per feature (``(D,)``) or per channel (``(C, H, W)``).

    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.

    A new layer is the identity, or normalizes data of the given ``mean`` and ``std``. Glow's
    data-dependent initialization (zero mean and unit variance on a first batch) is one explicit
    act, :func:`pyro_flows.initialize`; no call of the layer ever changes its parameters. The
    ``initialized`` buffer records that it happened, so a reloaded layer is not initialized again.

    :param event_shape: ``D``/``(D,)`` or ``(C, H, W)``.
    :param mean: per-feature/channel mean of the data the layer will normalize (optional).
    :param std: per-feature/channel standard deviation of that data (optional).

    >>> import torch, pyro_flows
    >>> t = ActNorm(3)
    >>> data = 5 + 2 * torch.randn(1000, 3)
    >>> bool(torch.equal(t.inv(data), data))   # the identity until initialized
    True
    >>> z = pyro_flows.initialize(t, data).inv(data)
    >>> bool(z.mean(0).abs().max() < 1e-4), bool((z.std(0) - 1).abs().max() < 1e-2)
    (True, True)
    """

    def __init__(self, event_shape: int | tuple[int, ...], mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> None:
        self.event_shape = as_event_shape(event_shape)
        super().__init__(event_dim=len(self.event_shape))
        image = len(self.event_shape) == 3
        shape = (self.event_shape[0], 1, 1) if image else self.event_shape
        self.pixels = self.event_shape[1] * self.event_shape[2] if image else 1
        loc = torch.zeros(shape) if mean is None else torch.as_tensor(mean).reshape(shape)
        scale = torch.ones(shape) if std is None else torch.as_tensor(std).reshape(shape)
        if not (scale > 0).all():
            raise ValueError("std must be positive")
        self.loc = nn.Parameter(loc.to(torch.get_default_dtype()).clone())
        self.log_scale = nn.Parameter(scale.log().to(torch.get_default_dtype()))
        self.register_buffer("initialized", torch.tensor(mean is not None or std is not None))
        # Set by pyro_flows.initialize for the length of its one statistics pass, else None.
        self.statistics: Statistics | None = None

    def _ladj(self, x: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.event_shape)]
        return (log_scale.sum() * self.pixels).expand(batch)

    def call_and_ladj(self, x: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, x, self.event_shape)
        return x * torch.exp(self.log_scale) + self.loc, self._ladj(x, self.log_scale)

    def inverse_and_ladj(self, y: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, y, self.event_shape)
        loc, log_scale = self.loc, self.log_scale
        if self.statistics is not None:  # inside pyro_flows.initialize: normalize this data
            loc, log_scale = self.statistics(self, y)
        return (y - loc) * torch.exp(-log_scale), self._ladj(y, log_scale)

    def channels(self, data: torch.Tensor) -> torch.Tensor:
        """``data`` as rows of features: ``(N, D)``, or one row per pixel ``(N*H*W, C)``."""
        check_event_shape(self, data, self.event_shape)
        c = self.event_shape[0]
        if len(self.event_shape) == 3:
            return data.reshape(-1, c, self.pixels).transpose(1, 2).reshape(-1, c)
        return data.reshape(-1, c)


def actnorm(input_dim: int | tuple[int, ...], **kwargs) -> ActNorm:
    """Factory for :class:`ActNorm` (Pyro style): ``input_dim`` is ``D`` or ``(C, H, W)``."""
    return ActNorm(input_dim, **kwargs)
