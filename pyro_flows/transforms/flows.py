"""Whole vector flows: ``nice``, ``realnvp`` and ``glow`` as Pyro ``ComposeTransformModule``s,
with mixing between couplings so that no coordinate is left untouched (Pyro's
``iterated(affine_coupling)`` never transforms its first coordinates).

The list order is Pyro's, base -> data: the last part touches the data, so an ActNorm there
initializes on data, and NICE's scaling sits next to the latent.
"""

from __future__ import annotations

from pyro.distributions.conditional import ConditionalComposeTransformModule
from pyro.distributions.torch_transform import ComposeTransformModule

from .actnorm import ActNorm
from .base import as_event_shape
from .glow import Chain
from .coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ConditionalAdditiveCoupling,
    ConditionalAffineCoupling,
)
from .linear import InvertibleLinear
from .reshape import Permutation
from .scaling import Scaling

__all__ = ["FLOW_TYPES", "conditional_vector_flow", "nice", "realnvp", "vector_flow", "vector_glow"]

FLOW_TYPES = ("nice", "realnvp", "glow")


def _parts(kind: str, input_dim: int, num_layers: int, hidden_dims, context_dim: int,
           data_init: bool, **coupling_kwargs) -> list:
    if kind not in FLOW_TYPES:
        raise ValueError(f"flow must be one of {FLOW_TYPES}, got {kind!r}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    d = input_dim
    if context_dim:
        cls = ConditionalAffineCoupling if kind != "nice" else ConditionalAdditiveCoupling
        make = lambda swap: cls(d, context_dim, swap=swap, hidden_dims=hidden_dims, **coupling_kwargs)
    else:
        cls = AffineCoupling if kind != "nice" else AdditiveCoupling
        make = lambda swap: cls(d, swap=swap, hidden_dims=hidden_dims, **coupling_kwargs)
    parts: list = [Scaling(d)] if kind == "nice" else []
    for i in range(num_layers):
        parts.append(make(bool(i % 2)))
        if kind == "glow":
            parts += [InvertibleLinear(d), ActNorm(d, data_init=data_init)]
        elif i % 2 and i < num_layers - 1 and d > 2:
            # Alternating halves alone never mix features within a half; a fixed shuffle does.
            parts.append(Permutation(d, seed=i))
    return parts


def vector_flow(kind: str, input_dim: int, num_layers: int = 4, hidden_dims=None,
                data_init: bool = True, memory_efficient: bool = False,
                **coupling_kwargs) -> ComposeTransformModule | Chain:
    """``nice``/``realnvp``/``glow`` on vectors ``(..., input_dim)``.

    :param kind: ``"nice"`` (additive couplings + final scaling), ``"realnvp"`` (affine couplings
        with alternating halves and fixed shuffles) or ``"glow"`` (affine coupling, LU
        invertible linear, ActNorm per layer).
    :param num_layers: number of couplings.
    :param hidden_dims: MLP widths of each coupling.
    :param data_init: data-dependent ActNorm initialization (``glow``; off for guides).
    :param memory_efficient: return a :class:`~pyro_flows.transforms.glow.Chain` of the same
        parts that keeps no intermediate activations for backprop (rebuilt by inversion).
    """
    input_dim = as_event_shape(input_dim, ranks=(1,))[0]
    parts = _parts(kind, input_dim, num_layers, hidden_dims, 0, data_init, **coupling_kwargs)
    return Chain(parts, memory_efficient=True) if memory_efficient else ComposeTransformModule(parts)


def conditional_vector_flow(kind: str, input_dim: int, context_dim: int, num_layers: int = 4,
                            hidden_dims=None, data_init: bool = True,
                            **coupling_kwargs) -> ConditionalComposeTransformModule:
    """The conditional twin of :func:`vector_flow`: every coupling network sees the context.

    >>> import torch
    >>> f = conditional_vector_flow("realnvp", 4, context_dim=2)
    >>> f.condition(torch.randn(2))(torch.randn(3, 4)).shape
    torch.Size([3, 4])
    """
    input_dim = as_event_shape(input_dim, ranks=(1,))[0]
    return ConditionalComposeTransformModule(
        _parts(kind, input_dim, num_layers, hidden_dims, context_dim, data_init, **coupling_kwargs),
        cache_size=1)


def nice(input_dim: int, num_layers: int = 4, hidden_dims=None) -> ComposeTransformModule:
    """NICE (Dinh et al., ICLR 2015) on vectors: additive couplings and a diagonal scaling.

    >>> import torch, pyro.distributions as dist
    >>> base = dist.Normal(torch.zeros(2), 1.).to_event(1)
    >>> dist.TransformedDistribution(base, nice(2)).sample((4,)).shape
    torch.Size([4, 2])
    """
    return vector_flow("nice", input_dim, num_layers, hidden_dims)


def realnvp(input_dim: int, num_layers: int = 4, hidden_dims=None, **kwargs) -> ComposeTransformModule:
    """RealNVP (Dinh et al., ICLR 2017) on vectors: affine couplings, alternating halves.

    >>> import torch, pyro.distributions as dist
    >>> base = dist.Normal(torch.zeros(2), 1.).to_event(1)
    >>> dist.TransformedDistribution(base, realnvp(2)).log_prob(torch.zeros(2)).shape
    torch.Size([])
    """
    return vector_flow("realnvp", input_dim, num_layers, hidden_dims, **kwargs)


def vector_glow(input_dim: int, num_layers: int = 4, hidden_dims=None, data_init: bool = True,
                **kwargs) -> ComposeTransformModule:
    """Glow's step on vectors (Kingma & Dhariwal, NeurIPS 2018): ActNorm, LU invertible linear,
    affine coupling, per layer.

    >>> import torch, pyro.distributions as dist
    >>> base = dist.Normal(torch.zeros(3), 1.).to_event(1)
    >>> dist.TransformedDistribution(base, vector_glow(3)).log_prob(torch.randn(5, 3)).shape
    torch.Size([5])
    """
    return vector_flow("glow", input_dim, num_layers, hidden_dims, data_init, **kwargs)
