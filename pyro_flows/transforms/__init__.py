"""Every pyro-flows transform: a Pyro ``TransformModule`` (or ``ConditionalTransformModule``)
per concept, each with its lower-case factory."""

from .actnorm import ActNorm, actnorm
from .base import Bijector
from .conditional import ConditionalBijector, ConditionedTransform
from .chain import Chain
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
from .flows import (
    conditional_nice,
    conditional_realnvp,
    conditional_vector_flow,
    conditional_vector_glow,
    nice,
    realnvp,
    vector_flow,
    vector_glow,
)
from .glow import GlowStep, glow_step
from .kinds import FLOW_KINDS
from .linear import InvertibleConv1x1, InvertibleLinear, invertible_conv1x1, invertible_linear
from .multiscale import (
    ConditionalGlow,
    ConditionalMultiScaleFlow,
    Glow,
    MultiScaleFlow,
    conditional_glow,
    conditional_multiscale_flow,
    glow,
    multiscale_flow,
)
from .reshape import Permutation, Squeeze, permutation, permute, squeeze
from .scaling import Scaling, scaling

__all__ = [
    "FLOW_KINDS",
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Bijector",
    "Chain",
    "ConditionalAdditiveCoupling",
    "ConditionalAffineCoupling",
    "ConditionalBijector",
    "ConditionalGlow",
    "ConditionalMultiScaleFlow",
    "ConditionedTransform",
    "Glow",
    "GlowStep",
    "InvertibleConv1x1",
    "InvertibleLinear",
    "MultiScaleFlow",
    "Permutation",
    "Scaling",
    "Squeeze",
    "actnorm",
    "additive_coupling",
    "affine_coupling",
    "conditional_additive_coupling",
    "conditional_affine_coupling",
    "conditional_glow",
    "conditional_multiscale_flow",
    "conditional_nice",
    "conditional_realnvp",
    "conditional_vector_flow",
    "conditional_vector_glow",
    "glow",
    "glow_step",
    "invertible_conv1x1",
    "invertible_linear",
    "multiscale_flow",
    "nice",
    "permutation",
    "permute",
    "realnvp",
    "scaling",
    "squeeze",
    "vector_flow",
    "vector_glow",
]
