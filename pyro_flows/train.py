"""The names ``pyro_flows.train`` has always offered; they live in :mod:`pyro_flows.training`,
which splits :func:`fit` into parts a custom loop can reuse."""

from .training import CHECKPOINT_NAME, History, adam, fit, linear_warmup

__all__ = ["CHECKPOINT_NAME", "History", "adam", "fit", "linear_warmup"]
