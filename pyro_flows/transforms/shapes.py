"""Event shapes: normalizing what users pass, and checking what transforms receive."""

from __future__ import annotations

import torch

__all__ = ["as_event_shape", "check_event_shape"]


def as_event_shape(event_shape: int | tuple[int, ...], ranks: tuple[int, ...] = (1, 3)) -> tuple[int, ...]:
    """Normalize ``D`` to ``(D,)`` and check the shape has an allowed rank and positive sizes."""
    shape = (event_shape,) if isinstance(event_shape, int) else tuple(int(s) for s in event_shape)
    if len(shape) not in ranks or any(s < 1 for s in shape):
        kinds = {1: "(D,) for vectors", 3: "(C, H, W) for images"}
        raise ValueError(
            f"event_shape must be {' or '.join(kinds[r] for r in ranks)}, got {shape}"
        )
    return shape


def check_event_shape(owner: object, x: torch.Tensor, event_shape: tuple[int, ...]) -> None:
    """Raise a ValueError naming ``owner`` when ``x`` does not end in ``event_shape``."""
    n = len(event_shape)
    if x.dim() < n or tuple(x.shape[x.dim() - n :]) != tuple(event_shape):
        raise ValueError(
            f"{type(owner).__name__} expects inputs whose trailing shape is {tuple(event_shape)}, "
            f"got a tensor of shape {tuple(x.shape)}"
        )
