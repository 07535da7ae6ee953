"""Conditioning, the one way: a conditional twin's ``condition(context)`` returns a transform
whose protocol methods pass that context to the :class:`~pyro_flows.transforms.Bijector` inside,
which was built with a ``context_dim``."""

from __future__ import annotations

import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch.distributions import Transform

from .base import Bijector, _Adapters, _Produced

__all__ = ["ConditionalBijector", "ConditionedTransform"]


class ConditionedTransform(_Adapters, Transform):
    """``parent`` with its context fixed: what :meth:`ConditionalBijector.condition` returns."""

    bijective = True

    def __init__(self, parent: "ConditionalBijector", context: torch.Tensor, cache_size: int = 1):
        super().__init__(cache_size=cache_size)
        self.parent, self.context = parent, context
        self.domain, self.codomain = parent.domain, parent.codomain
        self.__dict__["_produced"] = _Produced()

    def call_and_ladj(self, x: torch.Tensor, context: None = None):
        return self.parent.flow.call_and_ladj(x, self.context)

    def inverse_and_ladj(self, y: torch.Tensor, context: None = None):
        return self.parent.flow.inverse_and_ladj(y, self.context)

    def forward_shape(self, shape):
        return self.parent.flow.forward_shape(shape)

    def inverse_shape(self, shape):
        return self.parent.flow.inverse_shape(shape)


class ConditionalBijector(ConditionalTransformModule):
    """A conditional twin: a :class:`Bijector` built with a context size (``self.flow``), used
    through ``condition(context)``. The context ends in ``context_dim`` and broadcasts against
    the batch shape of the inputs."""

    def __init__(self, flow: Bijector, context_dim: int) -> None:
        super().__init__()
        if context_dim < 1:
            raise ValueError(f"context_dim must be a positive integer, got {context_dim}")
        # A flow built without a context would ignore it, and one built for another size would
        # fail deep inside its networks: both are refused here.
        sizes = {m.context_dim for m in flow.modules() if getattr(m, "context_dim", 0)}
        if context_dim not in sizes:
            built = f"for a context of size {', '.join(map(str, sorted(sizes)))}" if sizes else (
                "without a context")
            raise ValueError(f"{type(self).__name__} got a {type(flow).__name__} built {built}; "
                             f"build the flow with context_dim={context_dim} (e.g. "
                             f"conditional_realnvp(input_dim, {context_dim}).flow)")
        self.flow, self.context_dim = flow, context_dim
        self.domain, self.codomain = flow.domain, flow.codomain

    @property
    def event_dim(self) -> int:
        return self.flow.event_dim

    def condition(self, context: torch.Tensor) -> ConditionedTransform:
        if context.dim() < 1 or context.shape[-1] != self.context_dim:
            raise ValueError(f"{type(self).__name__} expects a context whose last dimension is "
                             f"{self.context_dim}, got shape {tuple(context.shape)}")
        return ConditionedTransform(self, context)
