"""Data-dependent initialization, as one explicit act: :func:`initialize`."""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.distributed as dist
from pyro.distributions.conditional import ConditionalTransformModule
from torch import nn
from torch.distributions import Transform

from .transforms.actnorm import ActNorm

__all__ = ["initialize"]

M = TypeVar("M", bound=nn.Module)


class _Statistics:
    """Each ActNorm's statistics on the data reaching it in one pass, global across ranks."""

    def __init__(self) -> None:
        self.found: dict[ActNorm, tuple[torch.Tensor, torch.Tensor]] = {}
        self.distributed = dist.is_available() and dist.is_initialized()

    def __call__(self, layer: ActNorm, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.found:
            self.found[layer] = self._measure(layer, y)
        return self.found[layer]

    def _measure(self, layer: ActNorm, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = layer.channels(y.detach()).to(layer.loc.dtype)
        # Two passes (mean, then centred squares): E[x^2] - E[x]^2 loses the variance of data
        # far from zero to cancellation.
        sums = torch.stack([rows.new_full(rows.shape[1:], float(len(rows))), rows.sum(0)])
        if self.distributed:
            dist.all_reduce(sums)
        mean = sums[1] / sums[0]
        squares = (rows - mean).square().sum(0)
        if self.distributed:
            dist.all_reduce(squares)
        var = squares / sums[0]
        # A constant feature keeps unit scale: its output is zero, never infinite.
        std = torch.where(var > 1e-12, var.sqrt(), torch.ones_like(var))
        return mean.reshape(layer.loc.shape), std.log().reshape(layer.log_scale.shape)


def _pass(model: nn.Module, batch: torch.Tensor, context: torch.Tensor | None) -> None:
    """Run ``batch`` from the data towards the latent through ``model``."""
    if isinstance(model, ConditionalTransformModule):
        if context is None:
            raise ValueError(f"{type(model).__name__} is conditional: pass the batch's context "
                             "as initialize(flow, batch, context=...)")
        model.condition(context).inv(batch)
    elif isinstance(model, Transform):
        model.inv(batch)
    elif callable(getattr(model, "log_prob", None)):
        model.log_prob(batch)
    else:
        raise TypeError(f"initialize needs a transform or a model with log_prob(data), got "
                        f"{type(model).__name__}")


@torch.no_grad()
def initialize(model: M, batch: torch.Tensor, context: torch.Tensor | None = None, *,
               force: bool = False) -> M:
    """Initialize every :class:`~pyro_flows.transforms.ActNorm` in ``model`` from a data batch,
    so that its output on ``batch`` has zero mean and unit variance per feature (Glow's
    data-dependent initialization, Kingma & Dhariwal 2018, section 3.1). Returns ``model``.

    ``model`` is a flow (a Pyro transform, conditional ones with ``context``) or any module
    with ``log_prob(data)`` such as :class:`~pyro_flows.FlowModel`. The batch runs once from the
    data towards the latent; each layer normalizes with the statistics of the data reaching
    it, and only afterwards are those written into its parameters. Layers already initialized
    (``initialized`` buffer, e.g. loaded from a checkpoint) are left alone unless ``force``.

    Under ``torch.distributed`` every rank must call this with its share of the batch: the
    statistics are those of the global batch, all-reduced here and nowhere else, so every
    rank ends with the same parameters.

    >>> import torch, pyro_flows
    >>> flow = pyro_flows.build("glow", event_shape=(3,), num_layers=2)
    >>> x = 10 + 3 * torch.randn(500, 3)
    >>> z = pyro_flows.initialize(flow, x).inv(x)
    >>> bool(z.std(0).max() < 1.5)
    True
    """
    layers = [m for m in model.modules()
              if isinstance(m, ActNorm) and (force or not bool(m.initialized))]
    if not layers:
        return model
    statistics = _Statistics()
    try:
        for layer in layers:
            layer.statistics = statistics
        _pass(model, batch, context)
    finally:
        for layer in layers:
            layer.statistics = None
    missed = [layer for layer in layers if layer not in statistics.found]
    if missed:
        raise ValueError(f"{len(missed)} ActNorm layer(s) of {type(model).__name__} saw no data "
                         "on the way from the data to the latent; initialize the flow they "
                         "belong to with the data that reaches it")
    for layer, (loc, log_scale) in statistics.found.items():
        layer.loc.copy_(loc)
        layer.log_scale.copy_(log_scale)
        layer.initialized.fill_(True)
    return model
