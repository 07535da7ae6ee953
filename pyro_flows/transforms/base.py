"""The one mechanism every pyro-flows transform shares: compute ``y`` and the log-det together,
and cache them so that neither is ever computed twice nor returned stale.

A subclass implements two methods that return the log-det alongside the value::

    _forward(x, context) -> (y, log|det dy/dx|)      # Pyro's sampling direction, base -> data
    _backward(y, context) -> (x, log|det dy/dx|)     # data -> base; log-det still of _forward

Pyro's :class:`~pyro.distributions.TransformedDistribution` asks for ``t.inv(y)`` and then
``t.log_abs_det_jacobian(x, y)``; the pair computed by the first call is remembered so the second
is free. The memory is keyed on the identity of ``x`` and ``y`` *and* on the version counters of
the parameters, so an in-place update invalidates it: Pyro's own transforms return stale values
after an optimizer step (pyro-ppl issue 2564). torch's fused optimizers (``Adam(...,
fused=True)``) write parameters without bumping their version counters, so the key also holds a
count of every ``Optimizer.step`` taken in the process. An update through ``p.data`` or a
functional optimizer call (``torch.optim.adam.adam(..., fused=True)``) bypasses both: write
parameters under ``torch.no_grad()`` instead.
"""

from __future__ import annotations

import copy
from operator import is_
from typing import Any

import torch
from torch import nn
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from torch.distributions import Transform, constraints
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

__all__ = [
    "Bijector",
    "ConditionalBijector",
    "ConditionedTransform",
    "as_event_shape",
    "check_event_shape",
    "same_state",
]


def as_event_shape(event_shape: int | tuple[int, ...], ranks: tuple[int, ...] = (1, 3)) -> tuple[int, ...]:
    """Normalize ``D`` to ``(D,)`` and check the shape has an allowed rank and positive sizes."""
    shape = (event_shape,) if isinstance(event_shape, int) else tuple(int(s) for s in event_shape)
    if len(shape) not in ranks or any(s < 1 for s in shape):
        kinds = {1: "(D,) for vectors", 3: "(C, H, W) for images"}
        raise ValueError(
            f"event_shape must be {' or '.join(kinds[r] for r in ranks)}, got {shape}"
        )
    return shape


def check_event_shape(owner: object, x: torch.Tensor, event_shape: tuple[int, ...]) -> None:
    """Raise a ValueError naming ``owner`` when ``x`` does not end in ``event_shape``."""
    n = len(event_shape)
    if x.dim() < n or tuple(x.shape[x.dim() - n :]) != tuple(event_shape):
        raise ValueError(
            f"{type(owner).__name__} expects inputs whose trailing shape is {tuple(event_shape)}, "
            f"got a tensor of shape {tuple(x.shape)}"
        )


def _tree_plan(module: nn.Module) -> tuple:
    """What :func:`_param_state` reads for ``module``'s tree, and what proves it still current.

    Per module of the tree (``named_modules`` order: deduplicated, ``None`` children skipped),
    ``(module, its _modules dict, its _parameters dict, the children that dict held)``, with
    ``None`` for ``module`` itself (holding itself would be a reference cycle). The
    ``_parameters`` dicts are read afresh on every call, so a parameter registered, deleted or
    swapped for another (``setattr``, ``load_state_dict(assign=True)``,
    ``torch.func.functional_call``, ``_apply``) shows without any invalidation.
    """
    return tuple(
        (None if m is module else m, m._modules, m._parameters, tuple(m._modules.values()))
        for _, m in module.named_modules()
    )


def _plan_current(module: nn.Module, plan: tuple) -> bool:
    """Whether every module of ``plan`` still has the same ``_modules`` and ``_parameters`` dicts
    and the same children, i.e. ``named_modules`` would still visit the same modules. Checked
    on every call rather than invalidated by hooks: torch has no hook for ``del module.child``,
    nor for the direct ``_modules`` edits of ``ModuleList.insert``, ``Sequential.__delitem__``
    and the like, and a replaced submodule may sit deep inside a plain ``nn.Module``. Checking
    the dicts' identity also rejects a plan copied along with ``__dict__`` into a module given
    dicts of its own (``DataParallel`` replicas; ``deepcopy`` and pickle drop it in
    ``__getstate__``)."""
    for m, md, pd, kids in plan:
        m = module if m is None else m
        if m._modules is not md or m._parameters is not pd or len(md) != len(kids):
            return False
        if kids and not all(map(is_, md.values(), kids)):
            return False
    return True


def _param_state(module: nn.Module) -> tuple:
    """The count of optimizer steps taken, and the identity and version of each parameter of
    ``module``'s tree: changes on an optimizer step (fused or not), an in-place update
    (``load_state_dict``, ``torch.no_grad`` writes) and when a parameter is swapped
    (``assign=True``, ``torch.func.functional_call``), registered or deleted, or a submodule
    added or replaced.

    ``tuple((p, p._version) for p in module.parameters())`` (bar a parameter shared by two
    modules, listed once per owner) without walking the tree with ``named_modules`` each time:
    3 times per transform per ``log_prob``, that was a sixth of a batch-1 ``log_prob`` of an
    8-coupling RealNVP. Checking the plan costs about a third of a walk.
    """
    plan = module.__dict__.get("_state_plan")
    if plan is None or not _plan_current(module, plan):
        # A plain attribute (nn.Module.__setattr__ is not needed); __getstate__ drops it.
        plan = module.__dict__["_state_plan"] = _tree_plan(module)
    return _optimizer_steps, tuple(
        [(p, p._version) for _, _, pd, _ in plan for p in pd.values() if p is not None])


_optimizer_steps = 0


def _count_optimizer_step(optimizer: torch.optim.Optimizer, *args: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


# Counted before and after: a user's step hooks run between the two, and torch runs a global
# post-hook after the optimizer's own post-hooks.
register_optimizer_step_pre_hook(_count_optimizer_step)
register_optimizer_step_post_hook(_count_optimizer_step)


def same_state(a: tuple, b: tuple) -> bool:
    """Whether two ``_state_key()`` results name the same tensors at the same versions, with no
    optimizer step taken in between."""
    (steps_a, a), (steps_b, b) = a, b
    return (steps_a == steps_b and len(a) == len(b)
            and all(p is q and u == v for (p, u), (q, v) in zip(a, b)))


class _Memo:
    """Caching logic shared by modules and conditioned views (a mixin over ``Transform``)."""

    _record: tuple | None = None

    def _state_key(self) -> tuple:
        raise NotImplementedError

    def _memoized(self, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        # Inference tensors have no version counter, so nothing could prove a hit fresh.
        if torch.compiler.is_compiling() or torch.is_inference_mode_enabled() or x.is_inference():
            return self._compute(x, inverse)[0]
        key = self._state_key()
        rec = self._record
        i = 1 if inverse else 0
        if (
            self._cache_size
            and rec is not None
            and rec[i] is x
            and rec[5][i] == x._version
            and (rec[4] or not torch.is_grad_enabled())
            and same_state(rec[3], key)
        ):
            return rec[1 - i]
        out, ladj = self._compute(x, inverse)
        x_, y_ = (out, x) if inverse else (x, out)
        # Keyed after computing: ActNorm's data initialization changes parameters on the way.
        self._record = (x_, y_, ladj, self._state_key(), torch.is_grad_enabled(),
                        (x_._version, y_._version))
        return out

    def _compute(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self._backward_call(x) if inverse else self._forward_call(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._memoized(x, inverse=False)

    def _inv_call(self, y: torch.Tensor) -> torch.Tensor:
        return self._memoized(y, inverse=True)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_call(x)[0]

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._backward_call(y)[0]

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # never read the record: a guard on it recompiles
            return self._forward_call(x)[1]
        rec = self._record
        if (
            rec is not None
            and rec[0] is x
            and rec[1] is y
            and rec[5] == (x._version, y._version)
            and (rec[4] or not torch.is_grad_enabled())
            and same_state(rec[3], self._state_key())
        ):
            return rec[2]
        return self._forward_call(x)[1]

    def __getstate__(self) -> dict[str, Any]:
        # Tensors remembered from the last call may carry an autograd graph, which pickling
        # refuses; drop them from the copy only, never from the live object.
        state = super().__getstate__()
        state["_record"] = None
        state.pop("_state_plan", None)  # points at the original's dicts; a copy builds its own
        return state

    def with_cache(self, cache_size: int = 1):
        if cache_size == self._cache_size:
            return self
        if cache_size not in (0, 1):
            raise ValueError(f"cache_size must be 0 or 1, got {cache_size}")
        # A shallow copy shares the parameter, buffer and submodule dicts, so the view trains
        # together with the original; only the caching policy differs.
        view = copy.copy(self)
        view._cache_size = cache_size
        view._record = None
        view._inv = None
        return view


class Bijector(_Memo, TransformModule):
    """Base class of pyro-flows' transforms on tensors with ``event_dim`` trailing event dims.

    Subclasses implement ``_forward(x, context=None)`` and ``_backward(y, context=None)``, each
    returning ``(value, log|det d_forward|)`` with the log-det of shape ``x.shape[:-event_dim]``.
    """

    bijective = True

    def __init__(self, event_dim: int, cache_size: int = 1) -> None:
        super().__init__(cache_size=cache_size)
        self.domain = constraints.independent(constraints.real, event_dim)
        self.codomain = constraints.independent(constraints.real, event_dim)

    def _state_key(self) -> tuple:
        return _param_state(self)

    def _forward_call(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(x)

    def _clear_caches(self) -> None:
        self._record = None

    def _apply(self, fn, *args, **kwargs):
        # .to()/.double()/.cuda() swap parameter storage without touching version counters,
        # so anything computed before must go.
        self._clear_caches()
        return super()._apply(fn, *args, **kwargs)

    def _backward_call(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._backward(y)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None = None):
        raise NotImplementedError

    def _backward(self, y: torch.Tensor, context: torch.Tensor | None = None):
        raise NotImplementedError

    def _rebuild(self, out: torch.Tensor, context: torch.Tensor | None, inverse: bool):
        """For invertible backprop: rebuild the input that gave ``out`` (from ``_backward`` when
        ``inverse``, else ``_forward``) and rerun that direction on it with a graph.

        Returns ``(leaves, out, ladj, assemble)``: ``leaves`` are tensors requiring grad that
        make up the input, ``assemble(parts)`` joins tensors shaped like them into one input.
        Couplings override this to evaluate their conditioner once instead of twice.
        """
        with torch.no_grad():
            x = (self._forward if inverse else self._backward)(out, context)[0]
        x = x.detach().requires_grad_()
        with torch.enable_grad():
            y, ladj = (self._backward if inverse else self._forward)(x, context)
        return [x], y, ladj, lambda parts: parts[0]

    def __hash__(self) -> int:
        return id(self)


class ConditionedTransform(_Memo, Transform):
    """``parent`` with its context fixed: what ``ConditionalBijector.condition`` returns."""

    bijective = True

    def __init__(self, parent: "ConditionalBijector", context: torch.Tensor, cache_size: int = 1):
        super().__init__(cache_size=cache_size)
        self.parent = parent
        self.context = context
        self.domain = parent.domain
        self.codomain = parent.codomain

    def _state_key(self) -> tuple:
        return _param_state(self.parent)

    def _forward_call(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.parent.flow._forward(x, self.context)

    def _backward_call(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.parent.flow._backward(y, self.context)

    def forward_shape(self, shape):
        return self.parent.flow.forward_shape(shape)

    def inverse_shape(self, shape):
        return self.parent.flow.inverse_shape(shape)


class ConditionalBijector(ConditionalTransformModule):
    """A conditional twin: wraps a :class:`Bijector` built with a context size (``self.flow``).

    ``condition(context)`` returns a cached :class:`ConditionedTransform`; the context must end
    in ``context_dim`` and broadcast against the batch shape of the inputs.
    """

    def __init__(self, flow: Bijector, context_dim: int) -> None:
        super().__init__()
        if context_dim < 1:
            raise ValueError(f"context_dim must be a positive integer, got {context_dim}")
        self.flow = flow
        self.context_dim = context_dim
        self.domain = flow.domain
        self.codomain = flow.codomain

    @property
    def event_dim(self) -> int:
        return self.flow.event_dim

    def condition(self, context: torch.Tensor) -> ConditionedTransform:
        if context.dim() < 1 or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"{type(self).__name__} expects a context whose last dimension is "
                f"{self.context_dim}, got shape {tuple(context.shape)}"
            )
        return ConditionedTransform(self, context)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_state_plan", None)  # the plan kept by its views' _param_state(self)
        return state

    def __hash__(self) -> int:
        return id(self)
