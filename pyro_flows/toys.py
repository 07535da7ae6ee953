"""2-D toy densities (the usual benchmarks of the continuous-flow literature), generated from a
seed: :data:`TOYS`, :func:`toy` and one function per density."""

from __future__ import annotations

import math
import operator
from typing import Callable

import numpy as np
import torch

__all__ = ["TOYS", "toy", "two_moons", "circles", "eight_gaussians", "checkerboard", "pinwheel",
           "spirals"]

# The usual benchmark densities of the continuous-flow literature, scaled so
# the points lie roughly in [-4, 4]^2 and a standard normal base fits them
# without a data-dependent rescaling.

def _count(n: int) -> int:
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"number of points must be >= 0, got {n}")
    return n


def _finish(rng: np.random.Generator, x: np.ndarray) -> torch.Tensor:
    # Components are generated in blocks; shuffle so that any prefix of the
    # sample is itself a fair sample.
    return torch.from_numpy(rng.permutation(x).astype(np.float32))


def two_moons(n: int, seed: int = 0) -> torch.Tensor:
    """Two interleaved half circles with Gaussian noise (sd 0.2 after scaling)."""
    n, rng = _count(n), np.random.default_rng(seed)
    t_up, t_down = rng.uniform(0.0, math.pi, (n + 1) // 2), rng.uniform(0.0, math.pi, n // 2)
    up = np.stack([np.cos(t_up), np.sin(t_up)], axis=1)
    down = np.stack([1.0 - np.cos(t_down), 0.5 - np.sin(t_down)], axis=1)
    x = np.concatenate([up, down]) + 0.1 * rng.standard_normal((n, 2))
    return _finish(rng, 2.0 * (x - [0.5, 0.25]))


def circles(n: int, seed: int = 0) -> torch.Tensor:
    """Two concentric noisy rings of radii 3 and 1.5."""
    n, rng = _count(n), np.random.default_rng(seed)
    radius = np.where(np.arange(n) < (n + 1) // 2, 1.0, 0.5)
    t = rng.uniform(0.0, 2.0 * math.pi, n)
    x = radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return _finish(rng, 3.0 * (x + 0.08 * rng.standard_normal((n, 2))))


def eight_gaussians(n: int, seed: int = 0) -> torch.Tensor:
    """Mixture of eight equal Gaussians evenly spaced on a circle of radius ~2.8."""
    n, rng = _count(n), np.random.default_rng(seed)
    angle = rng.integers(0, 8, n) * (math.pi / 4.0)
    centres = 4.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return _finish(rng, (centres + 0.5 * rng.standard_normal((n, 2))) / math.sqrt(2.0))


def checkerboard(n: int, seed: int = 0) -> torch.Tensor:
    """Uniform on the 8 dark squares of a 4x4 board covering [-4, 4]^2."""
    n, rng = _count(n), np.random.default_rng(seed)
    cell = rng.integers(0, 8, n)
    row = cell // 2
    # In each row the dark squares are the columns of the row's parity.
    col = 2 * (cell % 2) + (row % 2)
    x = np.stack([col, row], axis=1) + rng.uniform(0.0, 1.0, (n, 2))
    return _finish(rng, 2.0 * x - 4.0)


def pinwheel(n: int, seed: int = 0) -> torch.Tensor:
    """Five curved arms: Gaussian blobs rotated by an angle growing with radius."""
    n, rng = _count(n), np.random.default_rng(seed)
    arms, rate = 5, 0.25
    f = rng.standard_normal((n, 2)) * [0.3, 0.1] + [1.0, 0.0]
    angle = rng.integers(0, arms, n) * (2.0 * math.pi / arms) + rate * np.exp(f[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    x = np.stack([c * f[:, 0] - s * f[:, 1], s * f[:, 0] + c * f[:, 1]], axis=1)
    return _finish(rng, 2.0 * x)


def spirals(n: int, seed: int = 0) -> torch.Tensor:
    """Two intertwined spiral arms, each turning 1.5 times."""
    n, rng = _count(n), np.random.default_rng(seed)
    # sqrt makes the density per unit arc length roughly constant.
    t = np.sqrt(rng.uniform(0.0, 1.0, n)) * 3.0 * math.pi
    x = np.stack([-t * np.cos(t), t * np.sin(t)], axis=1)
    x[n // 2:] *= -1.0
    return _finish(rng, x / 3.0 + 0.1 * rng.standard_normal((n, 2)))


_TOY_FNS: dict[str, Callable[..., torch.Tensor]] = {
    f.__name__: f for f in (two_moons, circles, eight_gaussians, checkerboard, pinwheel, spirals)
}
#: Names accepted by :func:`toy` and :func:`load`.
TOYS: tuple[str, ...] = tuple(_TOY_FNS)


def toy(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """Sample ``n`` points of the toy density ``name`` (one of :data:`TOYS`).

    :returns: float32 tensor of shape ``(n, 2)``; the same seed gives the same points.
    """
    try:
        fn = _TOY_FNS[name]
    except KeyError:
        raise ValueError(f"unknown toy {name!r}; known: {', '.join(TOYS)}") from None
    return fn(n, seed=seed)
