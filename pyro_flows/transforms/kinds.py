"""The kinds of whole flow, named once for the vector flows, the multi-scale image flows and
the registry: ``nice`` (additive couplings), ``realnvp`` (affine couplings) and ``glow``
(ActNorm, invertible linear mixing, affine coupling)."""

__all__ = ["FLOW_KINDS"]

FLOW_KINDS = ("nice", "realnvp", "glow")
