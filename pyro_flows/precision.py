"""Mixed precision that keeps the density exact.

``autocast("bf16-mixed", device)`` runs a flow's conditioner networks (the coupling nets) in
bfloat16, where a CPU with AMX or a GPU with tensor cores computes them several times faster.
Their first layer, the one that reads the conditioning data, must not round the data to
bfloat16's 8 bits (the conditioner would become a step function of them: a 2-D toy fit lost
1.5 % of its test NLL that way, within 0.4 % with the first layer in float32): an MLP's stays
float32, and Glow's conv net runs its first layer in bfloat16 on two-term splits of the data
and weights, about 16 bits each (:class:`~pyro_flows.nn.SplitBFloat16Conv2d`). The one-layer
split priors of a multi-scale flow stay float32. Everything a density depends on stays float32: each
transform casts its conditioner's output to float32 *before* the log-scale is bounded, before
the affine or additive update and before every log-det; ActNorm, the LU factors and mixing of
invertible linear maps, the base log-density and the preprocessing never leave float32.

What that buys: the log-det a flow reports is that of the map it actually computed, to float32
rounding, so ``log_prob`` is an exact density. A layer's inverse feeds its conditioner exactly
the tensor its forward fed it (the conditioning half passes through unchanged), so both
directions see the same low-precision output and each layer round-trips to float32 rounding.
Through a deep flow, an inner layer's recomputed input can differ from the original in its last
float32 bits and, now and then, round to the other neighbouring bfloat16 inside a conditioner:
that example then comes back off by about one bfloat16 step of a shift or scale. Autocast
applied to a flow that does not do this (Pyro's own, say) rounds the log-scales, and hence the
log-det, to 8 bits of mantissa: 4-5e-3 nats per example on the speed benchmark's tabular flows.

When to use it: training and scoring wide conditioners (Glow's conv nets, MLPs of hundreds of
units) on a CPU with AMX-BF16 or any recent GPU. ``"fp16-mixed"`` is for GPUs without bfloat16;
it needs a gradient scaler (``torch.amp.GradScaler``) in training, ``"bf16-mixed"`` does not.
Keep ``"fp32"`` for small nets, where the casts cost more than they save.

>>> import torch, pyro_flows
>>> model = pyro_flows.FlowModel.build("realnvp", (4,), num_layers=2)
>>> with autocast("bf16-mixed", "cpu"):
...     lp = model.log_prob(torch.randn(8, 4))
>>> lp.dtype
torch.float32
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

__all__ = ["PRECISIONS", "autocast", "full_precision", "grad_scaler", "same_autocast"]

#: The precision names accepted by :func:`autocast`, ``fit(precision=...)`` and ``--precision``.
PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")
_LOW = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


def autocast(precision: str = "fp32", device: str | torch.device = "cpu") -> ContextManager:
    """A context in which flows compute at ``precision`` on ``device``'s type.

    :param precision: ``"fp32"`` (nothing changes), ``"bf16-mixed"`` or ``"fp16-mixed"``
        (conditioner networks in bfloat16 / float16, all invertible arithmetic in float32).
    :param device: the device (or its type, ``"cpu"``, ``"cuda"``) the model lives on.
    :raises ValueError: for an unknown precision name.

    Wrap the loss computation only (the forward pass and the log-density), not the backward
    pass or the optimizer step: autograd runs each backward op in the precision of its forward.

    >>> with autocast("bf16-mixed"):
    ...     torch.nn.Linear(3, 2)(torch.randn(1, 3)).dtype
    torch.bfloat16
    >>> autocast("bf16")
    Traceback (most recent call last):
    ...
    ValueError: precision must be one of ('fp32', 'bf16-mixed', 'fp16-mixed'), got 'bf16'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "fp32":
        return contextlib.nullcontext()
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"mixed precision runs on 'cpu' or 'cuda' devices, got {device_type!r}; "
                         "use precision='fp32' there")
    if precision == "bf16-mixed" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bfloat16; use precision='fp16-mixed'")
    return torch.autocast(device_type, dtype=_LOW[precision])


def grad_scaler(precision: str = "fp32", device: str | torch.device = "cpu") -> torch.amp.GradScaler:
    """The gradient scaler a training loop at ``precision`` needs: active for ``"fp16-mixed"``
    (float16 gradients underflow without it), a pass-through otherwise.

    >>> grad_scaler("bf16-mixed").is_enabled(), grad_scaler("fp16-mixed").is_enabled()
    (False, True)
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16-mixed")


def full_precision(x: torch.Tensor) -> ContextManager:
    """A context that turns autocast off for ``x``'s device type while it is on (a no-op
    otherwise): for the invertible arithmetic of a transform, which must not run in low
    precision even when the caller's conditioners do.

    >>> with autocast("bf16-mixed"), full_precision(torch.zeros(1)):
    ...     torch.nn.Linear(3, 2)(torch.randn(1, 3)).dtype
    torch.float32
    """
    device_type = x.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def same_autocast(x: torch.Tensor) -> ContextManager:
    """A context that brings back, later, the autocast state in force now for ``x``'s device
    type: for a backward pass that recomputes a forward (memory-saving backprop), which must
    compute exactly as the forward did whatever state the caller of ``backward`` is in.

    >>> with autocast("bf16-mixed"):
    ...     again = same_autocast(torch.zeros(1))
    >>> with again:
    ...     torch.nn.Linear(3, 2)(torch.randn(1, 3)).dtype
    torch.bfloat16
    """
    device_type = x.device.type
    if device_type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                          enabled=torch.is_autocast_enabled(device_type))
