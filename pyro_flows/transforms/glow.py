"""Glow: the flow step (ActNorm -> invertible 1x1 conv -> affine coupling) and the multi-scale
model with split priors, as one bijection between images and a latent of the same shape.

Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018;
the multi-scale architecture is RealNVP's (Dinh et al., ICLR 2017).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..nn import channels_last, soft_clamp, zero_last_layer
from .actnorm import ActNorm
from .base import Bijector, ConditionalBijector, as_event_shape, check_event_shape
from .coupling import AdditiveCoupling, AffineCoupling
from .linear import InvertibleConv1x1
from .memory import run_blocks
from .reshape import squeeze2x2, unsqueeze2x2

__all__ = ["Chain", "ConditionalGlow", "Glow", "GlowStep", "conditional_glow", "glow", "glow_step"]

STEP_TYPES = ("glow", "realnvp", "nice")
PRIOR_SCALE_BOUND = 6.0  # split priors may need small scales (near-constant pixels)


class Chain(Bijector):
    """Bijectors applied in order in the sampling direction, log-dets summed; the context, if
    any, reaches every part. With ``memory_efficient=True`` no intermediate activation is kept
    for backprop: each is rebuilt from the output by inverting the parts
    (:func:`~pyro_flows.transforms.memory.invertible_checkpoint`)."""

    def __init__(self, parts: Sequence[Bijector], memory_efficient: bool = False) -> None:
        super().__init__(event_dim=parts[0].event_dim)
        # Registered under "0", "1", ... like Pyro's ComposeTransformModule, so a checkpoint
        # loads whichever of the two holds the parts.
        for i, part in enumerate(parts):
            self.add_module(str(i), part)
        self.parts = list(parts)
        self.memory_efficient = memory_efficient

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None = None):
        return run_blocks(self.parts, x, context, False, self.memory_efficient)

    def _backward(self, y: torch.Tensor, context: torch.Tensor | None = None):
        return run_blocks(self.parts[::-1], y, context, True, self.memory_efficient)


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
        data_init: bool = True,
    ) -> None:
        shape = as_event_shape(event_shape, ranks=(3,))
        couplings = {"affine": AffineCoupling, "additive": AdditiveCoupling}
        if coupling not in couplings:
            raise ValueError(f"coupling must be one of {tuple(couplings)}, got {coupling!r}")
        super().__init__([
            couplings[coupling](shape, mask="channel", hidden_channels=hidden_channels,
                                context_dim=context_dim, residual=residual),
            InvertibleConv1x1(shape, lu=lu),
            ActNorm(shape, data_init=data_init),
        ])


def _step(step_type: str, shape, k: int, hidden: int, lu: bool, residual: bool,
          context_dim: int, data_init: bool) -> Bijector:
    """Step ``k`` of a level. RealNVP and NICE alternate checkerboard and channel masks, and
    which half transforms; RealNVP's batch norm is replaced by ActNorm."""
    if step_type == "glow":
        return GlowStep(shape, hidden, "affine", lu, residual, context_dim, data_init)
    mask = "checkerboard" if k % 4 < 2 and shape[1] * shape[2] > 1 else "channel"
    cls = AffineCoupling if step_type == "realnvp" else AdditiveCoupling
    coupling = cls(shape, mask=mask, swap=bool(k % 2), hidden_channels=hidden,
                   context_dim=context_dim, residual=residual)
    if step_type == "nice":
        return coupling
    return Chain([coupling, ActNorm(shape, data_init=data_init)])


def max_levels(event_shape: tuple[int, int, int]) -> int:
    """How many times the image can be squeezed (halved in height and width)."""
    _, h, w = event_shape
    n = 0
    while h % 2 == 0 and w % 2 == 0:
        h, w, n = h // 2, w // 2, n + 1
    return n


class Glow(Bijector):
    """The multi-scale flow of Glow as ONE bijection ``[..., C, H, W] -> [..., C, H, W]``.

    Data -> latent, at each of ``levels`` levels: squeeze (``C, H, W -> 4C, H/2, W/2``),
    ``steps`` flow steps, then (except at the last level) split off half of the channels. The
    split-off half ``z2`` gets a learned conditional Gaussian prior given the kept half ``h``,
    ``N(mu(h), sigma(h))``, written as the affine map ``eps = (z2 - mu(h)) / sigma(h)``; the top
    level gets a learned per-element Gaussian the same way. The latent assembles all ``eps`` back
    into ``(C, H, W)`` by undoing the squeezes, so with a standard Normal base,
    ``TransformedDistribution(Normal(0, 1) over (C, H, W), [glow])`` is exactly Glow's density.

    :param event_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2 ** levels``.
    :param levels: number of scales ``L`` (default: up to 3, as many as the shape allows).
    :param steps: flow steps per level ``K``.
    :param hidden_channels: width of the coupling conv nets.
    :param step_type: ``"glow"`` (ActNorm, 1x1 conv, affine coupling), ``"realnvp"`` (affine
        couplings with alternating checkerboard/channel masks, ActNorm) or ``"nice"`` (additive).
    :param lu: LU-parameterized 1x1 convs.
    :param residual: residual variant of the coupling conv nets.
    :param context_dim: context vector size for :class:`ConditionalGlow` (0: none).
    :param data_init: data-dependent ActNorm initialization (turn off for guides).
    :param memory_efficient: keep no step activations for backprop; rebuild them from each
        level's output by inverting the steps (same gradients, about one extra pass of compute).

    >>> import torch, pyro.distributions as dist
    >>> g = Glow((1, 8, 8), levels=2, steps=2, hidden_channels=16)
    >>> base = dist.Normal(torch.zeros(1, 8, 8), 1.).to_event(3)
    >>> dist.TransformedDistribution(base, [g]).log_prob(torch.randn(5, 1, 8, 8)).shape
    torch.Size([5])
    """

    def __init__(
        self,
        event_shape: tuple[int, int, int],
        levels: int | None = None,
        steps: int = 8,
        hidden_channels: int = 128,
        step_type: str = "glow",
        lu: bool = True,
        residual: bool = False,
        context_dim: int = 0,
        data_init: bool = True,
        memory_efficient: bool = False,
    ) -> None:
        self.event_shape = as_event_shape(event_shape, ranks=(3,))
        super().__init__(event_dim=3)
        self.memory_efficient = memory_efficient
        if step_type not in STEP_TYPES:
            raise ValueError(f"step_type must be one of {STEP_TYPES}, got {step_type!r}")
        possible = max_levels(self.event_shape)
        levels = min(3, possible) if levels is None else levels
        if levels < 1 or levels > possible:
            raise ValueError(
                f"event shape {self.event_shape} allows 1 to {possible} levels (height and width "
                f"must be divisible by 2 ** levels), got levels={levels}"
            )
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.context_dim = context_dim
        self.levels = nn.ModuleList()
        self.priors = nn.ModuleList()
        c, h, w = self.event_shape
        for level in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            self.levels.append(nn.ModuleList([
                _step(step_type, (c, h, w), k, hidden_channels, lu, residual, context_dim, data_init)
                for k in range(steps)
            ]))
            if level < levels - 1:
                self.priors.append(zero_last_layer(
                    nn.Conv2d(c // 2 + context_dim, c, 3, padding=1)
                ).to(memory_format=torch.channels_last))
                c //= 2
        self.top_shape = (c, h, w)
        self.top_loc = nn.Parameter(torch.zeros(self.top_shape))
        self.top_log_scale = nn.Parameter(torch.zeros(self.top_shape))
        if context_dim:
            self.top_context = zero_last_layer(nn.Linear(context_dim, 2 * c * h * w))

    # -- priors as affine maps eps -> z = eps * exp(log_scale) + loc ------------------------
    def _split_prior(self, level: int, kept: torch.Tensor, context: torch.Tensor | None):
        if context is not None:
            ctx = context[:, :, None, None].expand(-1, -1, *kept.shape[-2:])
            kept = torch.cat([kept, ctx], dim=1)
        loc, raw = self.priors[level](channels_last(kept)).contiguous().chunk(2, dim=1)
        return loc, soft_clamp(raw, PRIOR_SCALE_BOUND)

    def _top_prior(self, n: int, context: torch.Tensor | None):
        loc, raw = self.top_loc.expand(n, *self.top_shape), self.top_log_scale.expand(n, *self.top_shape)
        if context is not None:
            dloc, draw = self.top_context(context).reshape(n, 2, *self.top_shape).unbind(1)
            loc, raw = loc + dloc, raw + draw
        return loc, soft_clamp(raw, PRIOR_SCALE_BOUND)

    # -- the bijection ----------------------------------------------------------------------
    def _flatten(self, x: torch.Tensor, context: torch.Tensor | None):
        check_event_shape(self, x, self.event_shape)
        if self.context_dim and context is None:
            raise ValueError("this Glow was built with a context_dim; use ConditionalGlow.condition")
        batch = x.shape[:-3]
        if context is not None:
            batch = torch.broadcast_shapes(batch, context.shape[:-1])
            context = context.expand(*batch, self.context_dim).reshape(-1, self.context_dim)
        return x.expand(*batch, *self.event_shape).reshape(-1, *self.event_shape), context, batch

    def _backward(self, x: torch.Tensor, context: torch.Tensor | None = None):
        h, context, batch = self._flatten(x, context)
        ladj = h.new_zeros(h.shape[0])
        eps = []
        last = len(self.levels) - 1
        for level, steps in enumerate(self.levels):
            h = squeeze2x2(h)
            h, ld = run_blocks(list(steps), h, context, True, self.memory_efficient)
            ladj = ladj + ld
            if level < last:
                h, z2 = h.chunk(2, dim=1)
                loc, log_scale = self._split_prior(level, h, context)
                eps.append((z2 - loc) * torch.exp(-log_scale))
                ladj = ladj + log_scale.sum(dim=(1, 2, 3))
        loc, log_scale = self._top_prior(h.shape[0], context)
        z = (h - loc) * torch.exp(-log_scale)
        ladj = ladj + log_scale.sum(dim=(1, 2, 3))
        for level in range(last, -1, -1):
            if level < last:
                z = torch.cat([z, eps[level]], dim=1)
            z = unsqueeze2x2(z)
        return z.reshape(*batch, *self.event_shape), ladj.reshape(batch)

    def _forward(self, z: torch.Tensor, context: torch.Tensor | None = None):
        h, context, batch = self._flatten(z, context)
        eps = []
        last = len(self.levels) - 1
        for level in range(last + 1):
            h = squeeze2x2(h)
            if level < last:
                h, e = h.chunk(2, dim=1)
                eps.append(e)
        loc, log_scale = self._top_prior(h.shape[0], context)
        h = h * torch.exp(log_scale) + loc
        ladj = log_scale.sum(dim=(1, 2, 3))
        for level in range(last, -1, -1):
            if level < last:
                loc, log_scale = self._split_prior(level, h, context)
                h = torch.cat([h, eps[level] * torch.exp(log_scale) + loc], dim=1)
                ladj = ladj + log_scale.sum(dim=(1, 2, 3))
            h, ld = run_blocks(list(self.levels[level])[::-1], h, context, False,
                                self.memory_efficient)
            ladj = ladj + ld
            h = unsqueeze2x2(h)
        return h.reshape(*batch, *self.event_shape), ladj.reshape(batch)


class ConditionalGlow(ConditionalBijector):
    """:class:`Glow` conditioned on a context vector, which reaches every coupling network,
    every split prior and the top prior. Keyword arguments as for :class:`Glow`.

    >>> import torch
    >>> g = ConditionalGlow((1, 4, 4), context_dim=3, levels=1, steps=2, hidden_channels=8)
    >>> g.condition(torch.randn(6, 3)).inv(torch.randn(6, 1, 4, 4)).shape
    torch.Size([6, 1, 4, 4])
    """

    def __init__(self, event_shape, context_dim: int, **kwargs) -> None:
        super().__init__(Glow(event_shape, context_dim=context_dim, **kwargs), context_dim)


def glow_step(event_shape, **kwargs) -> GlowStep:
    """Factory for :class:`GlowStep` (Pyro style)."""
    return GlowStep(event_shape, **kwargs)


def glow(event_shape, **kwargs) -> Glow:
    """Factory for the multi-scale :class:`Glow` (Pyro style)."""
    return Glow(event_shape, **kwargs)


def conditional_glow(event_shape, context_dim: int, **kwargs) -> ConditionalGlow:
    """Factory for :class:`ConditionalGlow`."""
    return ConditionalGlow(event_shape, context_dim, **kwargs)
