"""Activation normalization (Glow): a per-feature (vectors) or per-channel (images) affine map
whose parameters are initialized from the first batch of data."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .base import Bijector, as_event_shape, check_event_shape

__all__ = ["ActNorm", "actnorm", "skip_data_init"]


class ActNorm(Bijector):
    """``y = x * exp(log_scale) + loc`` per feature (``(D,)``) or per channel (``(C, H, W)``).

    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.

    The first time the layer runs in the data -> latent direction (``inv``, as in
    ``log_prob``) it sets ``loc``/``log_scale`` so that its output on that batch has zero mean and
    unit variance per feature/channel. Under ``torch.distributed`` the statistics are those of
    the global batch, so every rank initializes identically. A feature/channel with zero
    variance keeps unit scale (its output is zero, never infinite). The ``initialized`` flag is a
    buffer: a reloaded layer is not initialized again.

    Sampling never initializes: an uninitialized layer is the identity. That is what a
    variational guide needs (it only samples); pass ``data_init=False`` there, or call
    :meth:`initialize` with data explicitly.

    :param event_shape: ``D``/``(D,)`` or ``(C, H, W)``.
    :param data_init: initialize from the first data batch (otherwise start as the identity).

    >>> import torch
    >>> t = ActNorm(3)
    >>> z = t.inv(5 + 2 * torch.randn(1000, 3))   # initializes on this batch
    >>> bool(z.mean(0).abs().max() < 1e-4), bool((z.std(0) - 1).abs().max() < 1e-2)
    (True, True)
    """

    def __init__(self, event_shape: int | tuple[int, ...], data_init: bool = True) -> None:
        self.event_shape = as_event_shape(event_shape)
        super().__init__(event_dim=len(self.event_shape))
        image = len(self.event_shape) == 3
        shape = (self.event_shape[0], 1, 1) if image else self.event_shape
        self.pixels = self.event_shape[1] * self.event_shape[2] if image else 1
        self.loc = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.tensor(not data_init))
        # A Python mirror of the buffer: branching on it needs no host sync and does not break
        # a compiled graph.
        self._initialized = not data_init

    def _ladj(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.event_shape)]
        return (self.log_scale.sum() * self.pixels).expand(batch)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, x, self.event_shape)
        return x * torch.exp(self.log_scale) + self.loc, self._ladj(x)

    def _backward(self, y: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, y, self.event_shape)
        if not self._initialized:
            self.initialize(y)
        return (y - self.loc) * torch.exp(-self.log_scale), self._ladj(y)

    @torch.no_grad()
    def initialize(self, data: torch.Tensor) -> None:
        """Set ``loc``/``log_scale`` so that ``inv(data)`` has zero mean, unit variance."""
        check_event_shape(self, data, self.event_shape)
        c = self.event_shape[0]
        if len(self.event_shape) == 3:
            flat = data.reshape(-1, c, self.pixels).transpose(1, 2).reshape(-1, c)
        else:
            flat = data.reshape(-1, c)
        # Two passes (mean, then centred squares): E[x^2] - E[x]^2 loses the variance of
        # data far from zero to cancellation.
        count = flat.new_full((c,), float(flat.shape[0]))
        sums = torch.stack([count, flat.sum(0)])
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(sums)
        mean = sums[1] / sums[0]
        squares = (flat - mean).square().sum(0)
        if distributed:
            dist.all_reduce(squares)
        var = squares / sums[0]
        std = torch.where(var > 1e-12, var.sqrt(), torch.ones_like(var))
        self.loc.copy_(mean.reshape(self.loc.shape))
        self.log_scale.copy_(std.log().reshape(self.log_scale.shape))
        self.mark_initialized()

    def mark_initialized(self) -> None:
        """Keep the current parameters and never initialize from data."""
        self.initialized.fill_(True)
        self._initialized = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.initialized.device.type != "meta":
            self._initialized = bool(self.initialized)


def skip_data_init(module: nn.Module) -> nn.Module:
    """Mark every :class:`ActNorm` inside ``module`` as initialized (identity start), as a
    variational guide, which only samples, needs."""
    for m in module.modules():
        if isinstance(m, ActNorm):
            m.mark_initialized()
    return module


def actnorm(event_shape, **kwargs) -> ActNorm:
    """Factory for :class:`ActNorm` (Pyro style)."""
    return ActNorm(event_shape, **kwargs)
