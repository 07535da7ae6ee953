"""Whole vector flows: ``nice``, ``realnvp`` and ``glow``, each one :class:`Chain` (so a
``TransformedDistribution`` over it runs it once per ``log_prob``), with mixing between couplings
so that no coordinate is left untouched (Pyro's ``iterated(affine_coupling)`` never transforms
its first coordinates).

The parts are in Pyro's order, base -> data: the last part touches the data, so an ActNorm there
normalizes the data itself, and NICE's scaling sits next to the latent.
"""

from __future__ import annotations

from .actnorm import ActNorm
from .conditional import ConditionalBijector
from .chain import Chain
from .coupling import AdditiveCoupling, AffineCoupling
from .kinds import FLOW_KINDS
from .linear import InvertibleLinear
from .reshape import Permutation
from .scaling import Scaling
from .shapes import as_event_shape

__all__ = ["conditional_nice", "conditional_realnvp", "conditional_vector_flow",
           "conditional_vector_glow", "nice", "realnvp", "vector_flow", "vector_glow"]


def _parts(kind: str, input_dim: int, num_layers: int, hidden_dims, context_dim: int,
           actnorm: bool = True, volume_preserving: bool = False, **coupling_kwargs) -> list:
    if kind not in FLOW_KINDS:
        raise ValueError(f"flow must be one of {FLOW_KINDS}, got {kind!r}")
    if kind != "glow" and (not actnorm or volume_preserving):
        raise TypeError(f"actnorm= and volume_preserving= shape Glow's steps; flow {kind!r} "
                        f"has no ActNorm or invertible linear layer")
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    d = input_dim
    cls = AffineCoupling if kind != "nice" else AdditiveCoupling
    make = lambda swap: cls(d, swap=swap, hidden_dims=hidden_dims, context_dim=context_dim,
                            **coupling_kwargs)
    parts: list = [Scaling(d)] if kind == "nice" else []
    for i in range(num_layers):
        parts.append(make(bool(i % 2)))
        if kind == "glow":
            parts.append(InvertibleLinear(d, volume_preserving=volume_preserving))
            if actnorm:
                parts.append(ActNorm(d))
        elif i % 2 and i < num_layers - 1 and d > 2:
            # Alternating halves alone never mix features within a half; a fixed shuffle does.
            parts.append(Permutation(d, seed=i))
    return parts


def vector_flow(kind: str, input_dim: int, num_layers: int = 4, hidden_dims=None,
                memory_efficient: bool = False, **coupling_kwargs) -> Chain:
    """``nice``/``realnvp``/``glow`` on vectors ``(..., input_dim)``.

    :param kind: ``"nice"`` (additive couplings + final scaling), ``"realnvp"`` (affine couplings
        with alternating halves and fixed shuffles) or ``"glow"`` (affine coupling, LU
        invertible linear, ActNorm per layer).
    :param num_layers: number of couplings.
    :param hidden_dims: MLP widths of each coupling.
    :param memory_efficient: keep no intermediate activations for backprop (rebuilt by
        inversion, see :class:`~pyro_flows.transforms.Chain`).
    :param coupling_kwargs: keyword arguments of the couplings (e.g. ``scale_bound``); for
        ``"glow"`` also ``actnorm=False`` (leave the ActNorms out) and ``volume_preserving=True``
        (invertible linear layers of determinant +-1), as guide flows are built.
    """
    input_dim = as_event_shape(input_dim, ranks=(1,))[0]
    parts = _parts(kind, input_dim, num_layers, hidden_dims, 0, **coupling_kwargs)
    return Chain(parts, memory_efficient=memory_efficient)


def conditional_vector_flow(kind: str, input_dim: int, context_dim: int, num_layers: int = 4,
                            hidden_dims=None, memory_efficient: bool = False,
                            **coupling_kwargs) -> ConditionalBijector:
    """The conditional twin of :func:`vector_flow`: every coupling network sees the context.

    >>> import torch
    >>> f = conditional_vector_flow("realnvp", 4, context_dim=2)
    >>> f.condition(torch.randn(2))(torch.randn(3, 4)).shape
    torch.Size([3, 4])
    """
    input_dim = as_event_shape(input_dim, ranks=(1,))[0]
    if context_dim < 1:
        raise ValueError(f"context_dim must be a positive integer, got {context_dim}")
    parts = _parts(kind, input_dim, num_layers, hidden_dims, context_dim, **coupling_kwargs)
    return ConditionalBijector(Chain(parts, memory_efficient=memory_efficient), context_dim)


def nice(input_dim: int, num_layers: int = 4, hidden_dims=None, **kwargs) -> Chain:
    """NICE (Dinh et al., ICLR 2015) on vectors: additive couplings and a diagonal scaling.

    >>> import torch, pyro.distributions as dist
    >>> base = dist.Normal(torch.zeros(2), 1.).to_event(1)
    >>> dist.TransformedDistribution(base, nice(2)).sample((4,)).shape
    torch.Size([4, 2])
    """
    return vector_flow("nice", input_dim, num_layers, hidden_dims, **kwargs)


def realnvp(input_dim: int, num_layers: int = 4, hidden_dims=None, **kwargs) -> Chain:
    """RealNVP (Dinh et al., ICLR 2017) on vectors: affine couplings, alternating halves.

    >>> import torch, pyro.distributions as dist
    >>> base = dist.Normal(torch.zeros(2), 1.).to_event(1)
    >>> dist.TransformedDistribution(base, realnvp(2)).log_prob(torch.zeros(2)).shape
    torch.Size([])
    """
    return vector_flow("realnvp", input_dim, num_layers, hidden_dims, **kwargs)


def vector_glow(input_dim: int, num_layers: int = 4, hidden_dims=None,
                **kwargs) -> Chain:
    """Glow's step on vectors (Kingma & Dhariwal, NeurIPS 2018): ActNorm, LU invertible linear,
    affine coupling, per layer. Initialize the ActNorms from data with
    :func:`pyro_flows.initialize` when fitting a density.

    >>> import torch, pyro.distributions as dist
    >>> base = dist.Normal(torch.zeros(3), 1.).to_event(1)
    >>> dist.TransformedDistribution(base, vector_glow(3)).log_prob(torch.randn(5, 3)).shape
    torch.Size([5])
    """
    return vector_flow("glow", input_dim, num_layers, hidden_dims, **kwargs)


def conditional_nice(input_dim: int, context_dim: int, num_layers: int = 4, hidden_dims=None,
                     **kwargs) -> ConditionalBijector:
    """The conditional twin of :func:`nice`: every coupling network sees the context."""
    return conditional_vector_flow("nice", input_dim, context_dim, num_layers, hidden_dims, **kwargs)


def conditional_realnvp(input_dim: int, context_dim: int, num_layers: int = 4, hidden_dims=None,
                        **kwargs) -> ConditionalBijector:
    """The conditional twin of :func:`realnvp`: every coupling network sees the context.

    >>> import torch
    >>> conditional_realnvp(1, 2).condition(torch.zeros(2))(torch.zeros(5, 1)).shape
    torch.Size([5, 1])
    """
    return conditional_vector_flow("realnvp", input_dim, context_dim, num_layers, hidden_dims,
                                   **kwargs)


def conditional_vector_glow(input_dim: int, context_dim: int, num_layers: int = 4,
                            hidden_dims=None, **kwargs) -> ConditionalBijector:
    """The conditional twin of :func:`vector_glow`: every coupling network sees the context."""
    return conditional_vector_flow("glow", input_dim, context_dim, num_layers, hidden_dims,
                                   **kwargs)
