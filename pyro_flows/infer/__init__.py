"""Flows as variational posteriors: an autoguide, an amortized VAE posterior, the IWAE bound."""

from .amortized import AmortizedFlow
from .autoflow import AutoFlow
from .guide_flow import build_guide_flow
from .iwae import importance_log_weights, importance_sample, iwae_log_likelihood

__all__ = [
    "AmortizedFlow",
    "AutoFlow",
    "build_guide_flow",
    "importance_log_weights",
    "importance_sample",
    "iwae_log_likelihood",
]
