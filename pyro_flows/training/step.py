"""One training step, cut where a custom loop needs to cut it: :func:`train_step` computes the
loss and the gradients (and clips them) but leaves the optimizer alone, so that a
:class:`~pyro_flows.training.NonFiniteGuard` can decide whether the step is taken."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import nn

from ..precision import autocast

__all__ = ["LossFn", "Objective", "StepResult", "nll",
           "train_step"]

#: ``loss(model, x) -> Tensor[batch]``: one loss per example, minimized on average.
LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def nll(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The default loss: ``-model.log_prob(x)``, one value per example (nats)."""
    return -model.log_prob(x)


class Objective(nn.Module):
    """``loss(model, x)`` as a module's ``forward``: DistributedDataParallel synchronizes the
    gradients of what ``forward`` computes, so the loss must run through it. With a
    ``precision`` other than ``"fp32"`` the loss is computed under
    :func:`pyro_flows.precision.autocast` (the backward pass then follows each op's precision).

    >>> class Q(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.theta = nn.Parameter(torch.zeros(1))
    ...     def log_prob(self, x):
    ...         return -0.5 * ((x - self.theta) ** 2).sum(-1)
    >>> Objective(Q())(torch.ones(3, 1))
    tensor([0.5000, 0.5000, 0.5000], grad_fn=<NegBackward0>)
    """

    def __init__(self, model: nn.Module, loss: LossFn | None = None,
                 precision: str = "fp32") -> None:
        super().__init__()
        autocast(precision)  # refuses an unknown name now rather than at the first step
        self.model, self.precision = model, precision
        self.loss = nll if loss is None else loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.precision, x.device):
            losses = self.loss(self.model, x)
        if losses.shape != x.shape[:1]:
            raise ValueError(f"the loss must give one value per example, shape ({len(x)},), "
                             f"got {tuple(losses.shape)}; does model.log_prob sum over the "
                             "event (e.g. .to_event)?")
        return losses


class StepResult(NamedTuple):
    """What :func:`train_step` measured, as tensors still on the device (reading them with
    ``.item()`` waits for the device: do it once per step at most)."""

    #: the sum of the batch's per-example losses, detached
    loss: torch.Tensor
    #: the norm of all gradients before clipping
    grad_norm: torch.Tensor


def train_step(objective: nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer,
               params: list[nn.Parameter], clip_grad_norm: float | None = None,
               scale: float | None = None,
               scaler: torch.amp.GradScaler | None = None) -> StepResult:
    """Fresh gradients of ``scale * objective(x).sum()`` (default scale ``1 / len(x)``: the
    batch mean), clipped to ``clip_grad_norm``. The optimizer does not step: the caller
    decides (see :class:`~pyro_flows.training.NonFiniteGuard`). Nothing here waits for the
    device.

    :param objective: a module whose ``forward(x)`` gives one loss per example, such as
        :class:`Objective` (or a DistributedDataParallel around one).
    :param scale: under DistributedDataParallel, which averages gradients over ranks, pass
        ``world_size / global_batch_size`` to get the gradient of the global mean.
    :param scaler: for ``"fp16-mixed"``, the gradient scaler
        (:func:`pyro_flows.precision.grad_scaler`); the gradients come back unscaled, and the
        caller steps with ``scaler.step(optimizer)`` and then ``scaler.update()``.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = objective(x).sum()
    mean = loss * (1.0 / len(x) if scale is None else scale)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(mean).backward()
        scaler.unscale_(optimizer)
    else:
        mean.backward()
    grad_norm = nn.utils.clip_grad_norm_(params, math.inf if clip_grad_norm is None
                                         else clip_grad_norm)
    return StepResult(loss.detach(), grad_norm)
