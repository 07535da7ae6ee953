"""The registry: the one module that knows every transform by name.

``build(name, event_shape=...)`` makes a ready transform for an event shape: ``(D,)`` for
vectors, ``(C, H, W)`` for images. What each built-in name builds:

==================================  =========================================  ==========================================
name                                vectors ``(D,)``                           images ``(C, H, W)``
==================================  =========================================  ==========================================
``additive_coupling``               :class:`AdditiveCoupling` (half mask)      :class:`AdditiveCoupling` (channel mask)
``affine_coupling``                 :class:`AffineCoupling` (half mask)        :class:`AffineCoupling` (channel mask)
``scaling``                         :class:`Scaling`                           :class:`Scaling`
``actnorm``                         :class:`ActNorm` per feature               :class:`ActNorm` per channel
``invertible_linear``               :class:`InvertibleLinear`                  --
``invertible_conv1x1``              --                                         :class:`InvertibleConv1x1`
``permutation``                     :class:`Permutation`                       --
``squeeze``                         --                                         :class:`Squeeze`
``glow_step``                       --                                         :class:`GlowStep`
``nice``                            :func:`nice`: additive couplings, scaling  :class:`MultiScaleFlow` ``kind="nice"``
``realnvp``                         :func:`realnvp`: affine couplings          :class:`MultiScaleFlow` ``kind="realnvp"``
``glow``                            :func:`vector_glow`: Glow steps            :class:`Glow` (multi-scale)
``conditional_<coupling or flow>``  its twin; needs ``context_dim``             its twin; needs ``context_dim``
==================================  =========================================  ==========================================

(classes from :mod:`pyro_flows.transforms`; the vector flows are :class:`Chain` s, Pyro
``TransformModule`` s of their layers, and their twins :class:`ConditionalBijector` s.) Third-party packages add transforms without touching
pyro-flows through the entry-point group ``pyro_flows.transforms``: each entry point names either
a builder ``f(event_shape, **kwargs)`` (registered under the entry point's name; optional
attributes ``event_dims`` and ``conditional``) or a module that calls :func:`register` when
imported. Entry points are loaded lazily, the first time a name is looked up or listed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from torch.distributions import Transform

from .transforms import (
    FLOW_KINDS,
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ConditionalAdditiveCoupling,
    ConditionalAffineCoupling,
    ConditionalGlow,
    ConditionalMultiScaleFlow,
    Glow,
    GlowStep,
    InvertibleConv1x1,
    InvertibleLinear,
    MultiScaleFlow,
    Permutation,
    Scaling,
    Squeeze,
    conditional_vector_flow,
    vector_flow,
)

__all__ = ["ENTRY_POINT_GROUP", "Entry", "available", "build", "entry", "register"]

ENTRY_POINT_GROUP = "pyro_flows.transforms"
VECTOR, IMAGE = 1, 3


@dataclass(frozen=True)
class Entry:
    """A registered transform: its builder, the event ranks it takes (1: vectors, 3: images) and
    whether it is conditional (its builder takes ``context_dim``)."""

    name: str
    builder: Callable[..., object]
    event_dims: tuple[int, ...]
    conditional: bool


_entries: dict[str, Entry] = {}
_plugins_loaded = False


def register(name: str, *, event_dims: tuple[int, ...] = (VECTOR, IMAGE),
             conditional: bool = False, replace: bool = False):
    """Decorator registering ``builder(event_shape, **kwargs) -> transform`` under ``name``.

    >>> import pyro_flows
    >>> @pyro_flows.register("my_scaling", event_dims=(1,))
    ... def my_scaling(event_shape, **kwargs):
    ...     return pyro_flows.transforms.Scaling(event_shape)
    >>> pyro_flows.build("my_scaling", event_shape=(3,)).event_dim
    1
    """
    def decorate(builder: Callable[..., object]) -> Callable[..., object]:
        if name in _entries and not replace:
            raise ValueError(f"a transform named {name!r} is already registered; pass replace=True")
        _entries[name] = Entry(name, builder, tuple(event_dims), conditional)
        return builder

    return decorate


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _entries:
            continue
        try:
            obj = ep.load()
        except Exception as error:  # one broken plugin must not hide the others
            warnings.warn(f"pyro-flows could not load the transform plugin {ep.name!r} "
                          f"({ep.value}): {error!r}", RuntimeWarning, stacklevel=3)
            continue
        if ep.name not in _entries and callable(obj):
            register(ep.name, event_dims=tuple(getattr(obj, "event_dims", (VECTOR, IMAGE))),
                     conditional=bool(getattr(obj, "conditional", False)))(obj)


def available() -> list[str]:
    """Sorted names of every registered transform, plugins included."""
    _load_plugins()
    return sorted(_entries)


def entry(name: str) -> Entry:
    """The :class:`Entry` registered under ``name``."""
    if name not in _entries:
        _load_plugins()
    if name not in _entries:
        raise KeyError(f"no transform named {name!r}; known transforms: {', '.join(available())}")
    return _entries[name]


def build(name: str, event_shape: int | tuple[int, ...], **kwargs):
    """A new transform ``name`` for inputs of ``event_shape``; ``kwargs`` go to its builder.

    >>> import torch, pyro_flows
    >>> pyro_flows.build("realnvp", event_shape=(2,), num_layers=2)(torch.zeros(2)).shape
    torch.Size([2])
    """
    e = entry(name)
    shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    if len(shape) not in e.event_dims:
        kinds = {VECTOR: "vectors (D,)", IMAGE: "images (C, H, W)"}
        takes = " or ".join(kinds.get(d, f"{d}-D events") for d in e.event_dims)
        flows = [n for n in ("realnvp", "glow", "nice") if len(shape) in entry(n).event_dims]
        raise ValueError(f"transform {name!r} takes {takes}, got event_shape {shape}; a whole "
                         f"flow for those is {' or '.join(flows)} (pyro_flows.available() lists "
                         "every transform)")
    if e.conditional and "context_dim" not in kwargs:
        raise ValueError(f"{name!r} is conditional: pass the size of its context, e.g. "
                         f"build({name!r}, event_shape={shape}, context_dim=3)")
    transform = e.builder(shape, **kwargs)
    if not isinstance(transform, Transform) and not hasattr(transform, "condition"):
        raise TypeError(f"builder of {name!r} returned {type(transform).__name__}, not a transform")
    return transform


# -- built-ins ------------------------------------------------------------------------------
def _by_rank(vector: Callable, image: Callable) -> Callable:
    return lambda shape, **kw: (vector if len(shape) == VECTOR else image)(shape, **kw)


def _flow(kind: str, conditional: bool) -> Callable:
    if conditional:
        image = ConditionalGlow if kind == "glow" else (
            lambda s, context_dim, **kw: ConditionalMultiScaleFlow(s, context_dim, kind=kind, **kw))
        return _by_rank(
            lambda s, context_dim, **kw: conditional_vector_flow(kind, s[0], context_dim, **kw),
            image)
    image = Glow if kind == "glow" else (lambda s, **kw: MultiScaleFlow(s, kind=kind, **kw))
    return _by_rank(lambda s, **kw: vector_flow(kind, s[0], **kw), image)


register("additive_coupling")(AdditiveCoupling)
register("affine_coupling")(AffineCoupling)
register("actnorm")(ActNorm)
register("scaling")(Scaling)
register("invertible_linear", event_dims=(VECTOR,))(InvertibleLinear)
register("invertible_conv1x1", event_dims=(IMAGE,))(InvertibleConv1x1)
register("permutation", event_dims=(VECTOR,))(Permutation)
register("squeeze", event_dims=(IMAGE,))(Squeeze)
register("glow_step", event_dims=(IMAGE,))(GlowStep)
register("conditional_additive_coupling", conditional=True)(ConditionalAdditiveCoupling)
register("conditional_affine_coupling", conditional=True)(ConditionalAffineCoupling)
for _kind in FLOW_KINDS:
    register(_kind)(_flow(_kind, conditional=False))
    register(f"conditional_{_kind}", conditional=True)(_flow(_kind, conditional=True))
