"""Helpers shared by the tests."""

from __future__ import annotations

import torch


def perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add seeded Gaussian noise to every parameter, so identity-initialized layers (zero last
    layers, ActNorm, rotations with log-det 0) are not trivially right."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module
