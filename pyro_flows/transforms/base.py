"""The one protocol every pyro-flows transform keeps: the value and ``log|det J|`` together,
both methods giving the log-det of the *forward* map (Pyro's sampling direction)::

    call_and_ladj(x, context=None) -> (y, log|det dy/dx|)
    inverse_and_ladj(y, context=None) -> (x, log|det dy/dx| at that x)

Pyro's ``_call``, ``_inverse`` and ``log_abs_det_jacobian`` are thin adapters over them. A
transform remembers only the ``(x, y, ladj)`` triple it just produced, so
``TransformedDistribution.log_prob`` runs it once and a guide scores its own draw for free; it
never serves a result for an input it was merely handed (pyro-ppl issue 2564).
"""

from __future__ import annotations

import copy

import torch
from pyro.distributions.torch_transform import TransformModule
from torch.distributions import constraints

__all__ = ["Bijector"]


class _Produced:
    """The last ``(x, y, ladj)`` a transform produced and which end it was handed; copies and
    pickles empty (the tensors may carry a graph, and a copy has produced nothing)."""

    __slots__ = ("x", "y", "ladj", "handed_x", "grad")

    def __init__(self) -> None:
        self.x = self.y = self.ladj = None
        self.handed_x, self.grad = True, False

    def __reduce__(self):
        return (_Produced, ())

    def __deepcopy__(self, memo) -> "_Produced":
        return _Produced()


def _usable(last: _Produced) -> bool:
    # A triple produced without a graph cannot serve a caller that wants gradients.
    return last.grad or not torch.is_grad_enabled()


class _Adapters:
    """Pyro's ``Transform`` interface over ``call_and_ladj`` / ``inverse_and_ladj``."""

    def _remember(self, x, y, ladj, handed_x: bool) -> None:
        if self._cache_size and not torch.compiler.is_compiling():
            last = self.__dict__["_produced"]
            last.x, last.y, last.ladj = x, y, ladj
            last.handed_x, last.grad = handed_x, torch.is_grad_enabled()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        last = self.__dict__["_produced"]
        if self._cache_size and not last.handed_x and last.x is x and _usable(last):
            return last.y  # x is an inverse this transform just computed
        y, ladj = self.call_and_ladj(x)
        self._remember(x, y, ladj, handed_x=True)
        return y

    def _inv_call(self, y: torch.Tensor) -> torch.Tensor:
        last = self.__dict__["_produced"]
        if self._cache_size and last.handed_x and last.y is y and _usable(last):
            return last.x  # y is an output this transform just computed
        x, ladj = self.inverse_and_ladj(y)
        self._remember(x, y, ladj, handed_x=False)
        return x

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self.call_and_ladj(x)[0]

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.inverse_and_ladj(y)[0]

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        last = self.__dict__["_produced"]
        if last.x is x and last.y is y and _usable(last):
            return last.ladj
        return self.call_and_ladj(x)[1]

    def with_cache(self, cache_size: int = 1):
        if cache_size == self._cache_size:
            return self
        if cache_size not in (0, 1):
            raise ValueError(f"cache_size must be 0 or 1, got {cache_size}")
        # A shallow copy shares parameters, buffers and submodules: the view trains with the
        # original, only the caching policy differs.
        view = copy.copy(self)
        view.__dict__.update(_cache_size=cache_size, _inv=None, _produced=_Produced())
        return view


class Bijector(_Adapters, TransformModule):
    """Base class of pyro-flows' transforms on tensors with ``event_dim`` trailing event dims.

    Subclasses implement :meth:`call_and_ladj` and :meth:`inverse_and_ladj`; the log-det has
    the input's batch shape. Transforms built with a ``context_dim`` take the context there;
    users reach them through a conditional twin's ``condition(context)``
    (:mod:`pyro_flows.transforms.conditional`).
    """

    bijective = True

    def __init__(self, event_dim: int, cache_size: int = 1) -> None:
        super().__init__(cache_size=cache_size)
        self.domain = constraints.independent(constraints.real, event_dim)
        self.codomain = constraints.independent(constraints.real, event_dim)
        self.__dict__["_produced"] = _Produced()

    def call_and_ladj(self, x: torch.Tensor, context: torch.Tensor | None = None):
        """``(y, log|det dy/dx|)``, forward (sampling) direction."""
        raise NotImplementedError

    def inverse_and_ladj(self, y: torch.Tensor, context: torch.Tensor | None = None):
        """``(x, log|det dy/dx|)``, ``x`` the preimage of ``y``."""
        raise NotImplementedError
