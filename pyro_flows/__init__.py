"""pyro-flows: NICE, RealNVP and Glow normalizing flows as Pyro transforms."""

import importlib

from . import data, infer, precision, training, transforms
from .init import initialize
from .model import FlowModel
from .registry import available, build, register
from .training import History, fit

__version__ = "0.1.0"


def __getattr__(name: str):
    # ArviZ is slow to import; load the diagnostics only when they are used.
    if name == "diagnostics":
        return importlib.import_module(".diagnostics", __name__)
    raise AttributeError(f"module 'pyro_flows' has no attribute {name!r}")

__all__ = [
    "FlowModel",
    "History",
    "available",
    "build",
    "data",
    "diagnostics",
    "fit",
    "infer",
    "initialize",
    "precision",
    "register",
    "training",
    "transforms",
]
