"""Validation: the mean negative log-likelihood of held-out examples, split over ranks."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from ..precision import autocast
from .examples import Examples, world

__all__ = ["mean_nll"]


@torch.no_grad()
def mean_nll(model: nn.Module, data: torch.Tensor | Examples, batch_size: int = 500,
             precision: str = "fp32") -> tuple[float, float | None]:
    """Mean NLL (nats per example) of ``data`` and, if the model has a ``bits_per_dim``
    method, the same in bits per dimension (else ``None``). Under ``torch.distributed`` each
    rank scores a slice and the sums are all-reduced: every rank calls it.

    >>> import pyro_flows
    >>> model = pyro_flows.FlowModel.build("realnvp", (2,), num_layers=2)
    >>> nll, bpd = mean_nll(model, torch.zeros(10, 2))
    >>> round(nll, 4), bpd == nll / (2 * math.log(2))
    (1.8379, True)
    """
    examples = data if isinstance(data, Examples) else Examples(data, "data")
    like = next(p for p in model.parameters())
    rank, size = world()
    has_bpd = callable(getattr(model, "bits_per_dim", None))
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=like.dtype, device=like.device)
    for idx in torch.arange(examples.size).tensor_split(size)[rank].split(batch_size):
        if len(idx):
            x = examples.batch(idx, like)
            with autocast(precision, x.device):
                log_prob = model.log_prob(x)
            if log_prob.shape != x.shape[:1]:
                raise ValueError(f"model.log_prob must return one value per example, shape "
                                 f"({len(x)},), got {tuple(log_prob.shape)}")
            total -= log_prob.sum()
    model.train(was_training)
    if size > 1:
        dist.all_reduce(total)
    nll = total.item() / examples.size
    dims = math.prod(examples.event_shape)
    return nll, (nll / (dims * math.log(2)) if has_bpd else None)
