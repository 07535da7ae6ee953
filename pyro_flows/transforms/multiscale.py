"""The multi-scale architecture of RealNVP and Glow: squeeze, ``K`` flow steps, split half off
with a learned conditional Gaussian prior; repeated over ``L`` levels, as one bijection between
images and a standard-normal latent of the same shape.

Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017; Kingma &
Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import channels_last, soft_clamp, zero_last_layer
from ..precision import full_precision
from .actnorm import ActNorm
from .base import Bijector
from .conditional import ConditionalBijector
from .chain import Chain
from .coupling import AdditiveCoupling, AffineCoupling
from .glow import GlowStep
from .kinds import FLOW_KINDS
from .memory import run_blocks
from .reshape import squeeze2x2, unsqueeze2x2
from .shapes import as_event_shape, check_event_shape

__all__ = ["ConditionalGlow", "ConditionalMultiScaleFlow", "Glow", "MultiScaleFlow",
           "conditional_glow", "conditional_multiscale_flow", "glow", "multiscale_flow"]

PRIOR_SCALE_BOUND = 6.0  # split priors may need small scales (near-constant pixels)


def _step(kind: str, shape, k: int, hidden: int, lu: bool, residual: bool,
          context_dim: int) -> Bijector:
    """Step ``k`` of a level. RealNVP and NICE alternate checkerboard and channel masks, and
    which half transforms; RealNVP's batch norm is replaced by ActNorm."""
    if kind == "glow":
        return GlowStep(shape, hidden, "affine", lu, residual, context_dim)
    mask = "checkerboard" if k % 4 < 2 and shape[1] * shape[2] > 1 else "channel"
    cls = AffineCoupling if kind == "realnvp" else AdditiveCoupling
    coupling = cls(shape, mask=mask, swap=bool(k % 2), hidden_channels=hidden,
                   context_dim=context_dim, residual=residual)
    if kind == "nice":
        return coupling
    return Chain([coupling, ActNorm(shape)])


def max_levels(event_shape: tuple[int, int, int]) -> int:
    """How many times the image can be squeezed (halved in height and width)."""
    _, h, w = event_shape
    n = 0
    while h % 2 == 0 and w % 2 == 0:
        h, w, n = h // 2, w // 2, n + 1
    return n


class MultiScaleFlow(Bijector):
    """The multi-scale flow of RealNVP and Glow as ONE bijection ``[..., C, H, W] -> [..., C, H, W]``.

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
    :param kind: the flow steps: ``"glow"`` (ActNorm, 1x1 conv, affine coupling),
        ``"realnvp"`` (affine couplings with alternating checkerboard/channel masks, ActNorm in
        place of batch norm) or ``"nice"`` (additive couplings).
    :param lu: LU-parameterized 1x1 convs.
    :param residual: residual variant of the coupling conv nets.
    :param context_dim: context vector size for :class:`ConditionalGlow` (0: none).
    :param memory_efficient: keep no step activations for backprop; rebuild them from each
        level's output by inverting the steps (same gradients, about one extra pass of compute).

    >>> import torch, pyro.distributions as dist
    >>> g = MultiScaleFlow((1, 8, 8), kind="realnvp", levels=2, steps=2, hidden_channels=16)
    >>> base = dist.Normal(torch.zeros(1, 8, 8), 1.).to_event(3)
    >>> dist.TransformedDistribution(base, [g]).log_prob(torch.randn(5, 1, 8, 8)).shape
    torch.Size([5])
    """

    def __init__(
        self,
        event_shape: tuple[int, int, int],
        kind: str = "glow",
        levels: int | None = None,
        steps: int = 8,
        hidden_channels: int = 128,
        lu: bool = True,
        residual: bool = False,
        context_dim: int = 0,
        memory_efficient: bool = False,
    ) -> None:
        self.event_shape = as_event_shape(event_shape, ranks=(3,))
        super().__init__(event_dim=3)
        self.memory_efficient = memory_efficient
        if kind not in FLOW_KINDS:
            raise ValueError(f"kind must be one of {FLOW_KINDS}, got {kind!r}")
        self.kind = kind
        possible = max_levels(self.event_shape)
        if possible == 0:
            raise ValueError(f"a multi-scale flow squeezes 2x2 patches, so the image height and "
                             f"width must be even; got event shape {self.event_shape} (crop or "
                             "pad the images, or flatten them and use a vector flow)")
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
                _step(kind, (c, h, w), k, hidden_channels, lu, residual, context_dim)
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
        # One layer reading the data: float32 under autocast (see nn.Float32InputLinear).
        with full_precision(kept):
            out = self.priors[level](channels_last(kept)).contiguous()
        loc, raw = out.chunk(2, dim=1)
        return loc, soft_clamp(raw, PRIOR_SCALE_BOUND)

    def _top_prior(self, n: int, context: torch.Tensor | None):
        loc, raw = self.top_loc.expand(n, *self.top_shape), self.top_log_scale.expand(n, *self.top_shape)
        if context is not None:
            with full_precision(context):
                out = self.top_context(context)
            dloc, draw = out.reshape(n, 2, *self.top_shape).unbind(1)
            loc, raw = loc + dloc, raw + draw
        return loc, soft_clamp(raw, PRIOR_SCALE_BOUND)

    # -- the bijection ----------------------------------------------------------------------
    def _flatten(self, x: torch.Tensor, context: torch.Tensor | None):
        check_event_shape(self, x, self.event_shape)
        if self.context_dim and context is None:
            raise ValueError(f"this {type(self).__name__} was built with a context_dim; use its "
                             "conditional twin's .condition(context)")
        batch = x.shape[:-3]
        if context is not None:
            batch = torch.broadcast_shapes(batch, context.shape[:-1])
            context = context.expand(*batch, self.context_dim).reshape(-1, self.context_dim)
        return x.expand(*batch, *self.event_shape).reshape(-1, *self.event_shape), context, batch

    def inverse_and_ladj(self, x: torch.Tensor, context: torch.Tensor | None = None):
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

    def call_and_ladj(self, z: torch.Tensor, context: torch.Tensor | None = None):
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

class Glow(MultiScaleFlow):
    """Glow (Kingma & Dhariwal, NeurIPS 2018): :class:`MultiScaleFlow` with Glow steps
    (:class:`~pyro_flows.transforms.GlowStep`). Keyword arguments as for
    :class:`MultiScaleFlow`, without ``kind``.

    >>> import torch
    >>> Glow((1, 4, 4), levels=1, steps=1, hidden_channels=8)(torch.zeros(2, 1, 4, 4)).shape
    torch.Size([2, 1, 4, 4])
    """

    def __init__(self, event_shape: tuple[int, int, int], **kwargs) -> None:
        super().__init__(event_shape, kind="glow", **kwargs)


class ConditionalMultiScaleFlow(ConditionalBijector):
    """:class:`MultiScaleFlow` conditioned on a context vector, which reaches every coupling
    network, every split prior and the top prior. Keyword arguments as for
    :class:`MultiScaleFlow`.

    >>> import torch
    >>> g = ConditionalMultiScaleFlow((1, 4, 4), context_dim=3, kind="realnvp", levels=1,
    ...                               steps=2, hidden_channels=8)
    >>> g.condition(torch.randn(6, 3)).inv(torch.randn(6, 1, 4, 4)).shape
    torch.Size([6, 1, 4, 4])
    """

    def __init__(self, event_shape, context_dim: int, **kwargs) -> None:
        super().__init__(MultiScaleFlow(event_shape, context_dim=context_dim, **kwargs), context_dim)


class ConditionalGlow(ConditionalBijector):
    """:class:`Glow` conditioned on a context vector (see :class:`ConditionalMultiScaleFlow`).

    >>> import torch
    >>> g = ConditionalGlow((1, 4, 4), context_dim=3, levels=1, steps=2, hidden_channels=8)
    >>> g.condition(torch.randn(6, 3)).inv(torch.randn(6, 1, 4, 4)).shape
    torch.Size([6, 1, 4, 4])
    """

    def __init__(self, event_shape, context_dim: int, **kwargs) -> None:
        super().__init__(Glow(event_shape, context_dim=context_dim, **kwargs), context_dim)


def multiscale_flow(input_dim: tuple[int, int, int], kind: str = "glow",
                    **kwargs) -> MultiScaleFlow:
    """Factory for :class:`MultiScaleFlow` (Pyro style): ``input_dim`` is ``(C, H, W)``."""
    return MultiScaleFlow(input_dim, kind=kind, **kwargs)


def glow(input_dim: tuple[int, int, int], **kwargs) -> Glow:
    """Factory for :class:`Glow` (Pyro style): ``input_dim`` is ``(C, H, W)``."""
    return Glow(input_dim, **kwargs)


def conditional_multiscale_flow(input_dim, context_dim: int, kind: str = "glow",
                                **kwargs) -> ConditionalMultiScaleFlow:
    """Factory for :class:`ConditionalMultiScaleFlow`."""
    return ConditionalMultiScaleFlow(input_dim, context_dim, kind=kind, **kwargs)


def conditional_glow(input_dim, context_dim: int, **kwargs) -> ConditionalGlow:
    """Factory for :class:`ConditionalGlow`."""
    return ConditionalGlow(input_dim, context_dim, **kwargs)
