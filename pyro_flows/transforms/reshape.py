"""Volume-preserving rearrangements: ``Squeeze`` (space to depth) and ``Permutation``."""

from __future__ import annotations

import torch

from .base import Bijector
from .shapes import as_event_shape, check_event_shape

__all__ = ["Permutation", "Squeeze", "permutation", "permute", "squeeze"]


def squeeze2x2(x: torch.Tensor) -> torch.Tensor:
    """``(..., C, H, W) -> (..., 4C, H/2, W/2)``: each 2x2 patch becomes 4 channels."""
    *batch, c, h, w = x.shape
    x = x.reshape(*batch, c, h // 2, 2, w // 2, 2)
    n = len(batch)
    x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    return x.reshape(*batch, 4 * c, h // 2, w // 2)


def unsqueeze2x2(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`squeeze2x2`."""
    *batch, c4, h, w = x.shape
    n = len(batch)
    x = x.reshape(*batch, c4 // 4, 2, 2, h, w)
    x = x.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return x.reshape(*batch, c4 // 4, 2 * h, 2 * w)


class Squeeze(Bijector):
    """Space-to-depth in the sampling direction: ``(C, H, W) -> (4C, H/2, W/2)``, log-det 0.

    Dinh et al., "Density estimation using Real NVP", ICLR 2017 (the squeezing operation).
    ``event_shape`` is the input shape of the forward (sampling) direction; near the data, use
    ``Squeeze(...).inv`` to squeeze data on its way to the latent.

    >>> import torch
    >>> t = Squeeze((1, 4, 4))
    >>> t(torch.randn(2, 1, 4, 4)).shape, t.forward_shape((1, 4, 4))
    (torch.Size([2, 4, 2, 2]), (4, 2, 2))
    """

    def __init__(self, event_shape: tuple[int, int, int]) -> None:
        self.event_shape = as_event_shape(event_shape, ranks=(3,))
        c, h, w = self.event_shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs an even height and width, got event shape {self.event_shape}")
        super().__init__(event_dim=3)
        self.out_shape = (4 * c, h // 2, w // 2)

    def call_and_ladj(self, x: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, x, self.event_shape)
        return squeeze2x2(x), x.new_zeros(x.shape[:-3])

    def inverse_and_ladj(self, y: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, y, self.out_shape)
        return unsqueeze2x2(y), y.new_zeros(y.shape[:-3])

    def forward_shape(self, shape):
        return tuple(shape[:-3]) + self.out_shape

    def inverse_shape(self, shape):
        return tuple(shape[:-3]) + self.event_shape


class Permutation(Bijector):
    """A fixed permutation of the features of a vector, ``y = x[..., perm]``, log-det 0.

    :param event_shape: ``D`` or ``(D,)``.
    :param permutation: the permutation; by default a random one drawn with ``seed``.
    :param seed: seeds that draw, without touching the global random state.

    >>> import torch
    >>> Permutation(3, permutation=torch.tensor([2, 0, 1]))(torch.tensor([1., 2., 3.]))
    tensor([3., 1., 2.])
    """

    def __init__(self, event_shape, permutation: torch.Tensor | None = None,
                 seed: int = 0) -> None:
        self.event_shape = as_event_shape(event_shape, ranks=(1,))
        super().__init__(event_dim=1)
        d = self.event_shape[0]
        if permutation is None:
            permutation = torch.randperm(d, generator=torch.Generator().manual_seed(seed))
        perm = torch.as_tensor(permutation, dtype=torch.long)
        if perm.shape != (d,) or not torch.equal(perm.sort().values, torch.arange(d)):
            raise ValueError(f"permutation must be a permutation of range({d}), got "
                             f"{perm.tolist()}")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def call_and_ladj(self, x: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, x, self.event_shape)
        return x.index_select(-1, self.perm), x.new_zeros(x.shape[:-1])

    def inverse_and_ladj(self, y: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, y, self.event_shape)
        return y.index_select(-1, self.inv_perm), y.new_zeros(y.shape[:-1])


def squeeze(input_dim: tuple[int, int, int]) -> Squeeze:
    """Factory for :class:`Squeeze` (Pyro style): ``input_dim`` is ``(C, H, W)``."""
    return Squeeze(input_dim)


def permutation(input_dim: int, permutation: torch.Tensor | None = None, dim: int = -1, *,
                seed: int = 0) -> Permutation:
    """Factory for :class:`Permutation` with the signature of Pyro's ``permute``.

    >>> import torch
    >>> permutation(4, permutation=torch.tensor([3, 2, 1, 0]))(torch.arange(4.))
    tensor([3., 2., 1., 0.])
    """
    if dim != -1:
        raise ValueError(f"dim={dim} is not supported: Permutation permutes the last dimension")
    return Permutation(input_dim, permutation, seed=seed)


permute = permutation  # Pyro's name for the same factory
