"""One step of Glow: ActNorm -> invertible 1x1 convolution -> affine coupling.

Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.
"""

from __future__ import annotations

from .actnorm import ActNorm
from .chain import Chain
from .coupling import AdditiveCoupling, AffineCoupling
from .linear import InvertibleConv1x1
from .shapes import as_event_shape

__all__ = ["GlowStep", "glow_step"]


class GlowStep(Chain):
    """One step of Glow. Data -> latent: ActNorm, invertible 1x1 conv (LU), affine coupling
    over channel halves with a zero-initialized conv net, so a new step is the identity apart
    from its ActNorm and 1x1 rotation.

    :param event_shape: ``(C, H, W)``, ``C >= 2``.
    :param hidden_channels: width of the coupling's conv net (512 in the paper).
    :param coupling: ``"affine"`` or ``"additive"`` (the paper's two variants).
    :param lu: LU-parameterized 1x1 conv.
    :param context_dim: size of a context vector given to the coupling (0: none).

    >>> import torch
    >>> step = GlowStep((4, 4, 4), hidden_channels=16)
    >>> z = step.inv(torch.randn(8, 4, 4, 4))
    >>> z.shape
    torch.Size([8, 4, 4, 4])
    """

    def __init__(
        self,
        event_shape: tuple[int, int, int],
        hidden_channels: int = 128,
        coupling: str = "affine",
        lu: bool = True,
        residual: bool = False,
        context_dim: int = 0,
    ) -> None:
        shape = as_event_shape(event_shape, ranks=(3,))
        couplings = {"affine": AffineCoupling, "additive": AdditiveCoupling}
        if coupling not in couplings:
            raise ValueError(f"coupling must be one of {tuple(couplings)}, got {coupling!r}")
        super().__init__([
            couplings[coupling](shape, mask="channel", hidden_channels=hidden_channels,
                                context_dim=context_dim, residual=residual),
            InvertibleConv1x1(shape, lu=lu),
            ActNorm(shape),
        ])


def glow_step(input_dim: tuple[int, int, int], **kwargs) -> GlowStep:
    """Factory for :class:`GlowStep` (Pyro style): ``input_dim`` is ``(C, H, W)``."""
    return GlowStep(input_dim, **kwargs)
