"""Invertible linear mixing: ``InvertibleLinear`` for vectors, ``InvertibleConv1x1`` for images.

Both hold a ``C x C`` matrix ``W``, either as a plain parameter (log-det by ``slogdet``, O(C^3))
or LU-parameterized as in Glow, ``W = P L (U + diag(sign * exp(log_diag)))`` with ``P`` and
``diag_sign`` fixed buffers, so the log-det is ``sum(log_diag)``: O(C), times ``H * W`` for images.
With ``volume_preserving=True`` the log-diagonal is a fixed buffer and ``|det W| = 1``: the
matrix shears and rotates but never scales, which is what a guide flow wants (its Gaussian
already carries the scale, and a second, free scale per layer multiplies into heavy tails).

The off-diagonal LU factors are stored multiplied by ``C`` (``L = I + lower / C``): Adam moves
every stored entry by about the learning rate in one step, and ``C`` entries of a row moving
together would move ``W`` by ``lr * C``, enough at SVI's learning rates (0.05) to blow up a
guide on its first step; stored this way a step moves ``W`` by ``O(lr)`` whatever ``C``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..precision import full_precision
from .base import Bijector
from .shapes import as_event_shape, check_event_shape

__all__ = ["InvertibleConv1x1", "InvertibleLinear", "invertible_conv1x1", "invertible_linear"]


class _InvertibleMatrix(Bijector):
    """The matrix, its inverse and its log-det; subclasses say how it acts on their inputs."""

    rank: int  # 1 for vectors, 3 for images

    def __init__(self, event_shape, lu: bool = True, volume_preserving: bool = False) -> None:
        self.event_shape = as_event_shape(event_shape, ranks=(self.rank,))
        super().__init__(event_dim=len(self.event_shape))
        if volume_preserving and not lu:
            raise ValueError("volume_preserving=True needs the LU parameterization (lu=True)")
        self.lu = lu
        c = self.event_shape[0]
        # A random rotation: invertible, log-det 0, and mixes every coordinate from the start.
        q = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))[0]
        if lu:
            p, lower, upper = torch.linalg.lu(q)
            diag = torch.diagonal(upper)
            self.register_buffer("permutation", p.argmax(dim=1))
            self.register_buffer("diag_sign", torch.sign(diag).to(torch.get_default_dtype()))
            self.lower = nn.Parameter((torch.tril(lower, -1) * c).to(torch.get_default_dtype()))
            self.upper = nn.Parameter((torch.triu(upper, 1) * c).to(torch.get_default_dtype()))
            log_diag = diag.abs().log().to(torch.get_default_dtype())
            if volume_preserving:  # a rotation's |diag U| multiply to 1: log-det 0 for good
                self.register_buffer("log_diag", log_diag)
            else:
                self.log_diag = nn.Parameter(log_diag)
        else:
            self.weight = nn.Parameter(q.to(torch.get_default_dtype()))

    def _matrices(self, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W or W^-1, log|det W|)`` from the current parameters."""
        if not self.lu:
            w = self.weight
            logdet = torch.linalg.slogdet(w)[1]
            return (torch.linalg.inv(w) if inverse else w), logdet
        c = self.lower.shape[0]
        eye = torch.eye(c, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) / c + eye
        upper = torch.triu(self.upper, 1) / c + torch.diag(self.diag_sign * torch.exp(self.log_diag))
        logdet = self.log_diag.sum()
        if not inverse:
            return (lower @ upper)[self.permutation], logdet
        inv_lower = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        inv_upper = torch.linalg.solve_triangular(upper, eye, upper=True)
        # W^-1 = U^-1 L^-1 P^T, and right-multiplying by P^T permutes columns.
        return (inv_upper @ inv_lower)[:, self.permutation], logdet

    def _mix(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _ladj(self, x: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
        pixels = self.event_shape[1] * self.event_shape[2] if len(self.event_shape) == 3 else 1
        return (logdet * pixels).expand(x.shape[: x.dim() - len(self.event_shape)])

    # The matrices and the mixing stay in the parameters' precision under autocast: W and W^-1
    # rounded to bfloat16 separately would no longer be each other's inverse.
    def call_and_ladj(self, x: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, x, self.event_shape)
        with full_precision(x):
            w, logdet = self._matrices(inverse=False)
            return self._mix(x, w), self._ladj(x, logdet)

    def inverse_and_ladj(self, y: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, y, self.event_shape)
        with full_precision(y):
            w_inv, logdet = self._matrices(inverse=True)
            return self._mix(y, w_inv), self._ladj(y, logdet)


class InvertibleLinear(_InvertibleMatrix):
    """``y = W x`` on vectors ``(..., D)``, ``W`` LU-parameterized (``lu=True``) or plain.

    The vector form of Glow's invertible 1x1 convolution (Kingma & Dhariwal, NeurIPS 2018):
    learned mixing between couplings.

    >>> import torch
    >>> t = InvertibleLinear(3)
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(t.inv(t(x)), x, atol=1e-5)
    True
    """

    rank = 1

    def _mix(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, w)


class InvertibleConv1x1(_InvertibleMatrix):
    """Glow's invertible 1x1 convolution on images ``(..., C, H, W)``: the same ``C x C``
    matrix mixes the channels at every pixel, log-det ``H * W * log|det W|``.

    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.

    >>> import torch
    >>> t = InvertibleConv1x1((4, 2, 2))
    >>> t(torch.randn(7, 4, 2, 2)).shape
    torch.Size([7, 4, 2, 2])
    """

    rank = 3

    def _mix(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (w @ x.flatten(-2)).unflatten(-1, x.shape[-2:])


def invertible_linear(input_dim: int, lu: bool = True,
                      volume_preserving: bool = False) -> InvertibleLinear:
    """Factory for :class:`InvertibleLinear` (Pyro style): ``input_dim`` is ``D``."""
    return InvertibleLinear(input_dim, lu=lu, volume_preserving=volume_preserving)


def invertible_conv1x1(input_dim: tuple[int, int, int], lu: bool = True,
                       volume_preserving: bool = False) -> InvertibleConv1x1:
    """Factory for :class:`InvertibleConv1x1` (Pyro style): ``input_dim`` is ``(C, H, W)``."""
    return InvertibleConv1x1(input_dim, lu=lu, volume_preserving=volume_preserving)
