"""Training and validation examples as :func:`~pyro_flows.fit` reads them, and the process
group it may run in (``torchrun``)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, IterableDataset

__all__ = ["Examples", "broadcast_state", "world"]


class Examples:
    """A Tensor ``(N, ...)`` or a map-style Dataset whose items are tensors or tuples starting
    with one (as ``TensorDataset`` gives), checked once: not empty, real, finite.

    >>> Examples(torch.zeros(5, 2), "data").event_shape
    (2,)
    """

    def __init__(self, data: torch.Tensor | Dataset, name: str) -> None:
        self.name = name
        self.tensor = data if isinstance(data, torch.Tensor) else None
        map_style = isinstance(data, Dataset) and not isinstance(data, IterableDataset)
        self.dataset = data if map_style else None
        if self.tensor is None and self.dataset is None:
            hint = " (for a pyro_flows.data.Splits pass .train and val_data=.val)" if hasattr(
                data, "train") else ""
            raise TypeError(f"{name} must be a Tensor (N, ...) or a map-style Dataset, got "
                            f"{type(data).__name__}{hint}")
        if self.tensor is not None and self.tensor.dim() == 0:
            raise ValueError(f"{name} must have a leading example dimension, got a scalar")
        self.size = len(data)
        if self.size == 0:
            raise ValueError(f"{name} is empty: there is nothing to train or validate on")
        first = self.tensor[:1] if self.tensor is not None else self._item(0)[None]
        if first.is_complex() or first.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers (floating point, or integers such "
                            f"as pixel values), got {first.dtype}")
        self.event_shape = tuple(first.shape[1:])
        if self.tensor is not None:
            self._check_finite(self.tensor, torch.arange(self.size))

    def _item(self, i: int) -> torch.Tensor:
        item = self.dataset[i]
        return torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item)

    def _check_finite(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        if not x.is_floating_point():
            return
        bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1)
        if bad.any():
            where = idx[bad.cpu()][:5].tolist()
            raise ValueError(f"{self.name} has {int(bad.sum())} example(s) with NaN or infinite "
                             f"values (at indices {where}...); remove or impute them")

    def batch(self, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The examples at ``idx``, on the device and in the dtype of ``like``."""
        if self.tensor is not None:
            x = self.tensor[idx.to(self.tensor.device)]
        else:
            x = torch.stack([self._item(i) for i in idx.tolist()])
            self._check_finite(x, idx)
        return x.to(device=like.device, dtype=like.dtype)


def world() -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_state(model: nn.Module) -> None:
    """Give every rank rank 0's weights and buffers through ``load_state_dict``, so that Python
    mirrors of buffers follow."""
    state = model.state_dict()
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            state[key] = value.clone()
            dist.broadcast(state[key], src=0)
    model.load_state_dict(state)
