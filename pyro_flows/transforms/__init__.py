"""Every pyro-flows transform: a Pyro ``TransformModule`` (or ``ConditionalTransformModule``)
per concept, each with its lower-case factory."""

from .actnorm import ActNorm, actnorm, skip_data_init
from .base import Bijector, ConditionalBijector, ConditionedTransform
from .coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ConditionalAdditiveCoupling,
    ConditionalAffineCoupling,
    additive_coupling,
    affine_coupling,
    conditional_additive_coupling,
    conditional_affine_coupling,
)
from .flows import conditional_vector_flow, nice, realnvp, vector_flow, vector_glow
from .glow import Chain, ConditionalGlow, Glow, GlowStep, conditional_glow, glow, glow_step
from .linear import InvertibleConv1x1, InvertibleLinear, invertible_conv1x1, invertible_linear
from .reshape import Permutation, Squeeze, permutation, squeeze
from .scaling import Scaling, scaling

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Bijector",
    "Chain",
    "ConditionalAdditiveCoupling",
    "ConditionalAffineCoupling",
    "ConditionalBijector",
    "ConditionalGlow",
    "ConditionedTransform",
    "Glow",
    "GlowStep",
    "InvertibleConv1x1",
    "InvertibleLinear",
    "Permutation",
    "Scaling",
    "Squeeze",
    "actnorm",
    "additive_coupling",
    "affine_coupling",
    "conditional_additive_coupling",
    "conditional_affine_coupling",
    "conditional_glow",
    "conditional_vector_flow",
    "glow",
    "glow_step",
    "invertible_conv1x1",
    "invertible_linear",
    "nice",
    "permutation",
    "realnvp",
    "scaling",
    "skip_data_init",
    "squeeze",
    "vector_flow",
    "vector_glow",
]
