"""pyro-flows: NICE, RealNVP and Glow normalizing flows as Pyro transforms."""

from . import transforms
from .registry import available, build, register

__version__ = "0.1.0"

__all__ = ["available", "build", "register", "transforms"]
