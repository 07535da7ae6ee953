"""pyro-flows: NICE, RealNVP and Glow normalizing flows as Pyro transforms."""

from . import transforms
from .model import FlowModel
from .registry import available, build, register

__version__ = "0.1.0"

__all__ = ["FlowModel", "available", "build", "register", "transforms"]
