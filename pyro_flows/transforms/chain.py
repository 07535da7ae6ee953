"""``Chain``: bijectors applied one after another, as one bijector."""

from __future__ import annotations

from typing import Sequence

import torch

from .base import Bijector
from .memory import run_blocks

__all__ = ["Chain"]


class Chain(Bijector):
    """Bijectors applied in order in the sampling direction (base -> data), log-dets summed; a
    context, if any, reaches every part. With ``memory_efficient=True`` no intermediate
    activation is kept for backprop: each is rebuilt from the output by inverting the parts
    (:func:`~pyro_flows.transforms.memory.invertible_checkpoint`).

    :param parts: the bijectors, all with the same ``event_dim``.
    :param memory_efficient: trade about one extra pass of compute for activation memory.

    >>> import torch
    >>> from pyro_flows.transforms import Chain, Scaling, Permutation
    >>> t = Chain([Scaling(3), Permutation(3, torch.tensor([2, 0, 1]))])
    >>> t(torch.tensor([1., 2., 3.]))
    tensor([3., 1., 2.], grad_fn=<IndexSelectBackward0>)
    """

    def __init__(self, parts: Sequence[Bijector], memory_efficient: bool = False) -> None:
        if not parts:
            raise ValueError("a Chain needs at least one part")
        dims = {part.event_dim for part in parts}
        if len(dims) != 1:
            raise ValueError(f"the parts of a Chain must share one event_dim, got {sorted(dims)}")
        super().__init__(event_dim=dims.pop())
        # Registered under "0", "1", ... like Pyro's ComposeTransformModule, so a checkpoint
        # loads whichever of the two holds the parts.
        for i, part in enumerate(parts):
            self.add_module(str(i), part)
        self.parts = list(parts)
        self.memory_efficient = memory_efficient

    def call_and_ladj(self, x: torch.Tensor, context: torch.Tensor | None = None):
        return run_blocks(self.parts, x, context, False, self.memory_efficient)

    def inverse_and_ladj(self, y: torch.Tensor, context: torch.Tensor | None = None):
        return run_blocks(self.parts[::-1], y, context, True, self.memory_efficient)

    def forward_shape(self, shape):
        for part in self.parts:
            shape = part.forward_shape(shape)
        return shape

    def inverse_shape(self, shape):
        for part in reversed(self.parts):
            shape = part.inverse_shape(shape)
        return shape
