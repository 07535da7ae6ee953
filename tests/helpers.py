"""Helpers shared by the tests."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

import pyro_flows


def perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add seeded Gaussian noise to every parameter, so identity-initialized layers (zero last
    layers, ActNorm, rotations with log-det 0) are not trivially right."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


class Quadratic(nn.Module):
    """log p(x) = -(x - theta)^2 / 2 summed over ``dim`` features: training pulls theta to the
    data mean."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((x - self.theta) ** 2).sum(-1)


class Sabotaged(nn.Module):
    """A small RealNVP density whose training calls give a non-finite loss (``kind="loss"``)
    or a finite loss with a NaN gradient (``kind="grad"``) when ``bad_calls(call)``."""

    def __init__(self, bad_calls: Callable[[int], bool], kind: str = "loss") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.flow = pyro_flows.FlowModel.build("realnvp", (2,), num_layers=2, hidden_dims=[8])
        self.bad_calls, self.kind, self.calls = bad_calls, kind, 0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        lp = self.flow.log_prob(x)
        if not torch.is_grad_enabled():
            return lp
        self.calls += 1
        if not self.bad_calls(self.calls):
            return lp
        if self.kind == "loss":
            return lp * math.nan
        # A finite value with a NaN gradient: d sqrt(u)/du at u = 0 is infinite, times 0.
        return lp + torch.sqrt(next(self.parameters()).sum() * 0)
