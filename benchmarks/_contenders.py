"""The contenders of ``speed.py``: one architecture per workload, built with each library's
public API, behind one small interface (:class:`Contender`).

Vector workloads are RealNVP: 8 affine couplings over alternating halves of the features, each
with a two-hidden-layer ReLU MLP, and a fixed shuffle of the features after every second
coupling. Image workloads are Glow (Kingma & Dhariwal, NeurIPS 2018): ``L`` levels of squeeze,
``K`` steps of ActNorm / LU 1x1 convolution / affine coupling over channel halves (conv net
3x3 -> 1x1 -> 3x3, zero-initialized output), and a split after every level but the last.

Only public APIs of the peers are called; the few pieces a peer's API lacks (an MLP or conv
net with the call signature the peer expects, Pyro's missing squeeze/split) are written here
with plain ``torch.nn``. Every difference that could not be removed is listed in the
contender's ``differences``, which ``speed.py`` copies into its report.

>>> c = build("pyro-flows", WORKLOADS["tab16"])
>>> c.log_prob(make_data(WORKLOADS["tab16"], 1)[0]).shape
torch.Size([1024])
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

import pyro_flows

__all__ = ["CONTENDERS", "WORKLOADS", "Contender", "Workload", "applicable", "build", "make_data"]


@dataclass(frozen=True)
class Workload:
    """One benchmark problem: event shape, batch size and architecture sizes."""

    name: str
    event_shape: tuple[int, ...]
    batch: int
    hidden: int
    layers: int = 8  # couplings (vectors)
    levels: int = 0  # scales L (images)
    steps: int = 0  # flow steps per level K (images)

    @property
    def image(self) -> bool:
        return len(self.event_shape) == 3


WORKLOADS = {
    "tab16": Workload("tab16", (16,), batch=1024, hidden=256),
    "tab64": Workload("tab64", (64,), batch=512, hidden=512),
    "glow8": Workload("glow8", (1, 8, 8), batch=256, hidden=128, levels=2, steps=8),
    "glow32": Workload("glow32", (3, 32, 32), batch=32, hidden=256, levels=3, steps=8),
}


@dataclass
class Contender:
    """A flow under test: ``module`` owns every parameter, ``log_prob(x)`` is the log-density
    of a batch, ``sample(n)`` draws ``n`` samples (reparameterized where the library can)."""

    name: str
    module: nn.Module
    log_prob: Callable[[torch.Tensor], torch.Tensor]
    sample: Callable[[int], torch.Tensor]
    differences: tuple[str, ...] = ()

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


def make_data(w: Workload, count: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` distinct batches. Distinct tensors matter: a transform cache keyed on tensor
    identity (Pyro's, pyro-issue 2564) would otherwise skip work and return stale results."""
    g = torch.Generator().manual_seed(seed)
    if w.image:  # pixels in [0, 1) with a little correlation between neighbours
        raw = torch.rand(count, w.batch, *w.event_shape, generator=g)
        data = 0.5 * raw + 0.5 * raw.roll(1, dims=-1)
    else:  # a correlated Gaussian, so ActNorm-free flows still have something to fit
        mix = torch.randn(w.event_shape[0], w.event_shape[0], generator=g) / w.event_shape[0] ** 0.5
        data = torch.randn(count, w.batch, *w.event_shape, generator=g) @ mix + 1.0
    return list(data.unbind(0))


# -- networks the peers' APIs expect but do not provide ------------------------------------
def _zero_last(net: nn.Sequential) -> nn.Sequential:
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class _MLP(nn.Sequential):
    """Linear-ReLU-Linear-ReLU-Linear; accepts (and ignores) nflows' ``context`` argument."""

    def __init__(self, n_in: int, n_out: int, hidden: int) -> None:
        super().__init__(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))
        _zero_last(self)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class _ConvNet(nn.Sequential):
    """Glow's coupling network 3x3 -> ReLU -> 1x1 -> ReLU -> 3x3; ignores ``context``."""

    def __init__(self, c_in: int, c_out: int, hidden: int) -> None:
        super().__init__(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1),
                         nn.ReLU(), nn.Conv2d(hidden, c_out, 3, padding=1))
        _zero_last(self)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class _FlatConvNet(nn.Module):
    """Pyro's ``AffineCoupling(dim=-3)`` hands its hypernet ``x1`` flattened to ``(N, C1*H*W)``
    and wants ``(shift, log_scale)`` back flattened the same way."""

    def __init__(self, c_in: int, c_out: int, hidden: int, hw: tuple[int, int]) -> None:
        super().__init__()
        self.c_in, self.hw = c_in, hw
        self.net = _ConvNet(c_in, 2 * c_out, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x.reshape(*x.shape[:-1], self.c_in, *self.hw))
        shift, log_scale = out.chunk(2, dim=-3)
        return shift.flatten(-3), log_scale.flatten(-3)


def _squeeze(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, 4 * c, h // 2, w // 2)


def _unsqueeze(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // 4, 2 * h, 2 * w)


def _level_shapes(w: Workload) -> list[tuple[int, int, int]]:
    """The event shape each Glow level's steps see: squeezed, and halved after each split."""
    c, h, wd = w.event_shape
    shapes = []
    for level in range(w.levels):
        c, h, wd = 4 * c, h // 2, wd // 2
        shapes.append((c, h, wd))
        if level < w.levels - 1:
            c //= 2
    return shapes


def _perm(d: int, seed: int) -> torch.Tensor:
    return torch.randperm(d, generator=torch.Generator().manual_seed(seed))


def _halves_swapped(d: int) -> torch.Tensor:
    return torch.cat([torch.arange(d // 2, d), torch.arange(d // 2)])


# -- pyro-flows -----------------------------------------------------------------------------
def _pyro_flows(w: Workload) -> Contender:
    if w.image:
        flow = pyro_flows.build("glow", event_shape=w.event_shape, levels=w.levels, steps=w.steps,
                                hidden_channels=w.hidden)
    else:
        flow = pyro_flows.build("realnvp", event_shape=w.event_shape, num_layers=w.layers,
                                hidden_dims=(w.hidden, w.hidden))
    base = dist.Normal(torch.zeros(w.event_shape), 1.0).to_event(len(w.event_shape))
    d = dist.TransformedDistribution(base, [flow])
    return Contender("pyro-flows", flow, d.log_prob, lambda n: d.rsample((n,)))


# -- Pyro's built-ins -----------------------------------------------------------------------
def _pyro_vector(w: Workload) -> Contender:
    d_in = w.event_shape[0]
    parts: list = []
    for i in range(w.layers):
        parts.append(T.affine_coupling(d_in, hidden_dims=[w.hidden, w.hidden]))
        if i < w.layers - 1:  # Pyro's coupling always conditions on the first half: swap halves
            parts.append(T.Permute(_halves_swapped(d_in) if i % 2 == 0 else _perm(d_in, i)))
    flow = T.ComposeTransformModule(parts)
    d = dist.TransformedDistribution(dist.Normal(torch.zeros(d_in), 1.0).to_event(1), [flow])
    return Contender("pyro", flow, d.log_prob, lambda n: d.rsample((n,)), (
        "7 explicit `Permute`s (4 half swaps + 3 shuffles) where pyro-flows has 3 shuffles: "
        "`AffineCoupling` always conditions on the first half, so halves cannot alternate for free",
        "log-scale clamped to [-5, 3] (`clamp_preserve_gradients`) instead of `3 tanh(s / 3)`",
        "hypernet last layer not zero-initialized (Pyro's default init; no speed effect)",
    ))


class _PyroGlow(nn.Module):
    """Glow from Pyro's parts: ``AffineCoupling(dim=-3)`` with a conv hypernet and
    ``GeneralizedChannelPermute`` per step. Pyro has no squeeze, split or learned prior, so the
    multi-scale driver (the same maths as pyro-flows' ``Glow``) is written here."""

    def __init__(self, w: Workload) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        self.priors = nn.ModuleList()
        shapes = _level_shapes(w)
        for level, (c, h, wd) in enumerate(shapes):
            steps = []
            for _ in range(w.steps):
                hyper = _FlatConvNet(c // 2, c - c // 2, w.hidden, (h, wd))
                steps += [T.AffineCoupling(c // 2, hyper, dim=-3), T.GeneralizedChannelPermute(c)]
            self.levels.append(T.ComposeTransformModule(steps))
            if level < len(shapes) - 1:
                self.priors.append(_zero_last(nn.Sequential(nn.Conv2d(c // 2, c, 3, padding=1))))
        self.top_loc = nn.Parameter(torch.zeros(shapes[-1]))
        self.top_log_scale = nn.Parameter(torch.zeros(shapes[-1]))

    @staticmethod
    def _gaussian(params: torch.Tensor) -> dist.Distribution:
        loc, log_scale = params.chunk(2, dim=1)
        return dist.Normal(loc, log_scale.exp(), validate_args=False).to_event(3)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        h, logp = x, x.new_zeros(x.shape[0])
        last = len(self.levels) - 1
        for level, flow in enumerate(self.levels):
            h = _squeeze(h)
            for part in reversed(flow.parts):  # what TransformedDistribution.log_prob does
                z = part.inv(h)
                logp = logp + part.log_abs_det_jacobian(z, h)
                h = z
            if level < last:
                h, z2 = h.chunk(2, dim=1)
                logp = logp + self._gaussian(self.priors[level](h)).log_prob(z2)
        top = torch.cat([self.top_loc, self.top_log_scale])[None].expand(h.shape[0], -1, -1, -1)
        return logp + self._gaussian(top).log_prob(h)

    def sample(self, n: int) -> torch.Tensor:
        top = torch.cat([self.top_loc, self.top_log_scale])[None].expand(n, -1, -1, -1)
        h = self._gaussian(top).rsample()
        for level in range(len(self.levels) - 1, -1, -1):
            if level < len(self.levels) - 1:
                h = torch.cat([h, self._gaussian(self.priors[level](h)).rsample()], dim=1)
            h = _unsqueeze(self.levels[level](h))
        return h


def _pyro(w: Workload) -> Contender:
    if not w.image:
        return _pyro_vector(w)
    glow = _PyroGlow(w)
    return Contender("pyro", glow, glow.log_prob, glow.sample, (
        "no ActNorm: Pyro has no such transform (pyro-flows runs one per step)",
        "squeeze / split / learned split and top priors written in the benchmark: Pyro has none",
        "`GeneralizedChannelPermute` inverts by a broadcast permutation product and two batched "
        "triangular solves per call (Pyro's implementation), not by a matrix product",
        "coupling log-scale clamped to [-5, 3] instead of `3 tanh(s / 3)`; x1 flattened and "
        "unflattened around the conv hypernet (views, no copy)",
    ))


# -- zuko -----------------------------------------------------------------------------------
def _zuko(w: Workload) -> Contender:
    import zuko

    d_in = w.event_shape[0]
    first = torch.arange(d_in) < d_in // 2
    parts: list = []
    for i in range(w.layers):  # zuko's mask marks the conditioning (constant) features
        parts.append(zuko.flows.GeneralCouplingTransform(
            d_in, mask=first if i % 2 == 0 else ~first, hidden_features=(w.hidden, w.hidden)))
        if i % 2 and i < w.layers - 1:
            parts.append(zuko.flows.UnconditionalTransform(
                zuko.transforms.PermutationTransform, _perm(d_in, i), buffer=True))
    base = zuko.flows.UnconditionalDistribution(
        zuko.distributions.DiagNormal, torch.zeros(d_in), torch.ones(d_in), buffer=True)
    flow = zuko.flows.Flow(parts, base)
    return Contender("zuko", flow, lambda x: flow().log_prob(x), lambda n: flow().rsample((n,)), (
        "split and merge by index gather/scatter (`CouplingTransform` indexes with the mask even "
        "for contiguous halves)",
        "log-scale soft-clipped as `s / (1 + |s / log(1e-3)|)` instead of `3 tanh(s / 3)`; "
        "shift and log-scale interleaved in the MLP output",
        "MLP last layer not zero-initialized (zuko's default init; no speed effect)",
    ))


# -- nflows ---------------------------------------------------------------------------------
def _nflows(w: Workload) -> Contender:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import (ActNorm, AffineCouplingTransform, CompositeTransform,
                                   MultiscaleCompositeTransform, OneByOneConvolution, Permutation,
                                   SqueezeTransform)

    if not w.image:
        d_in = w.event_shape[0]
        second = torch.where(torch.arange(d_in) < d_in // 2, -1, 1)  # > 0: transformed
        parts: list = []
        for i in range(w.layers):
            parts.append(AffineCouplingTransform(
                second if i % 2 == 0 else -second, lambda a, b: _MLP(a, b, w.hidden)))
            if i % 2 and i < w.layers - 1:
                parts.append(Permutation(_perm(d_in, i)))
        flow = Flow(CompositeTransform(parts), StandardNormal(w.event_shape))
        return Contender("nflows", flow, flow.log_prob, flow.sample, (
            "split and merge by index gather + `empty_like` and two index assignments",
            "scale `sigmoid(s + 2) + 1e-3` (log taken explicitly) instead of `exp(3 tanh(s / 3))`",
            "MLP written here (`nflows.nn.nets.MLP` does not take the `context` argument the "
            "coupling passes); same layers as Pyro's `DenseNN`",
        ))
    shapes = _level_shapes(w)
    multiscale = MultiscaleCompositeTransform(len(shapes), split_dim=1)
    for c, h, wd in shapes:
        mask = torch.where(torch.arange(c) < c // 2, -1, 1)
        steps: list = [SqueezeTransform()]
        for _ in range(w.steps):  # data -> latent order, as in pyro-flows' GlowStep.inv
            steps += [ActNorm(c), OneByOneConvolution(c, identity_init=False),
                      AffineCouplingTransform(mask, lambda a, b: _ConvNet(a, b, w.hidden))]
        multiscale.add_transform(CompositeTransform(steps), (c, h, wd))
    n_dims = torch.Size(w.event_shape).numel()
    flow = Flow(multiscale, StandardNormal([n_dims]))
    return Contender("nflows", flow, flow.log_prob, flow.sample, (
        "split-off halves go to the standard Normal base: no learned conditional split prior "
        "(one 3x3 conv per split in pyro-flows) and no learned top prior",
        "`OneByOneConvolution` is an `LULinear` on pixels moved to the last dim, plus a random "
        "channel permutation; it applies L and U as two products instead of one W",
        "split and merge by index gather + index assignment; scale `sigmoid(s + 2) + 1e-3`",
    ))


# -- normflows ------------------------------------------------------------------------------
def _normflows(w: Workload) -> Contender:
    import normflows as nf

    if not w.image:
        d_in = w.event_shape[0]
        flows: list = []
        for i in range(w.layers):
            net = nf.nets.MLP([d_in // 2, w.hidden, w.hidden, 2 * (d_in - d_in // 2)], init_zeros=True)
            flows.append(nf.flows.AffineCouplingBlock(net, scale=True, scale_map="exp"))
            if i < w.layers - 1:
                flows.append(nf.flows.Permute(d_in, mode="swap" if i % 2 == 0 else "shuffle"))
        model = nf.NormalizingFlow(nf.distributions.DiagGaussian(d_in, trainable=False), flows)
        return Contender("normflows", model, model.log_prob, lambda n: model.sample(n)[0], (
            "7 explicit `Permute`s (4 half swaps by `cat` + 3 shuffles): `AffineCouplingBlock` "
            "always transforms the second half",
            "log-scale not bounded (`scale_map='exp'`); shift and log-scale interleaved "
            "(strided views of the MLP output); LeakyReLU(0) instead of ReLU",
            "`sample` also computes the log-density of the samples (normflows' API returns both)",
        ))
    shapes = _level_shapes(w)
    q0, flows, merges = [], [], []
    for level in range(len(shapes) - 1, -1, -1):  # normflows lists levels from the top down
        c, h, wd = shapes[level]
        flows.append([nf.flows.GlowBlock(c, w.hidden, split_mode="channel", scale=True)
                      for _ in range(w.steps)] + [nf.flows.Squeeze()])
        latent = (c, h, wd) if level == len(shapes) - 1 else (c // 2, h, wd)
        if level < len(shapes) - 1:
            merges.append(nf.flows.Merge())
        q0.append(nf.distributions.GlowBase(latent))
    model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
    return Contender("normflows", model, lambda x: model.log_prob(x, None),
                     lambda n: model.sample(n)[0], (
        "split priors are learned per-channel Gaussians (`GlowBase`), not conditioned on the "
        "kept half: no 3x3 prior conv per split",
        "1x1 conv weight (and, for sampling, its inverse via two float64 `torch.inverse`) rebuilt "
        "from P, L, U on every call and applied with `conv2d`",
        "coupling scale `sigmoid(s + 2)` (Glow's) instead of `exp(3 tanh(s / 3))`; split/merge "
        "by `chunk`/`cat`; `sample` also computes the log-density of the samples",
    ))


# -- mixed precision ------------------------------------------------------------------------
def _bf16(builder: Callable[[Workload], Contender], name: str, note: str):
    """``builder``'s contender with its log-density and sampling under ``autocast("bf16-mixed")``
    (CPU). For pyro-flows that is the exact mixed precision of ``pyro_flows.precision``; for
    any other flow it is autocast applied naively."""
    def make(w: Workload) -> Contender:
        c = builder(w)

        def log_prob(x: torch.Tensor) -> torch.Tensor:
            with pyro_flows.precision.autocast("bf16-mixed", x.device):
                return c.log_prob(x)

        def sample(n: int) -> torch.Tensor:
            with pyro_flows.precision.autocast("bf16-mixed", "cpu"):
                return c.sample(n)
        return Contender(name, c.module, log_prob, sample, c.differences + (note,))
    return make


_BUILDERS: dict[str, Callable[[Workload], Contender]] = {
    "pyro-flows": _pyro_flows,
    "pyro": _pyro,
    "zuko": _zuko,
    "nflows": _nflows,
    "normflows": _normflows,
    "pyro-flows-bf16": _bf16(_pyro_flows, "pyro-flows-bf16",
                             "bf16-mixed: conditioners in bfloat16, density exact in float32"),
    "pyro-bf16": _bf16(_pyro, "pyro-bf16", "Pyro's flow under bf16 autocast, naively: log-scales "
                       "and log-dets rounded to bfloat16, 1x1 convs in bfloat16"),
}
CONTENDERS = tuple(_BUILDERS)
_MODULES = {"zuko": "zuko", "nflows": "nflows", "normflows": "normflows"}


def applicable(name: str, w: Workload) -> str | None:
    """``None`` if contender ``name`` runs on ``w``, else the reason it does not."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown contender {name!r}; choose from {', '.join(CONTENDERS)}")
    module = _MODULES.get(name)
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install -e '.[bench]')"
    if name == "zuko" and w.image:
        return "zuko has no convolutional coupling, 1x1 convolution or multi-scale flow"
    return None


def build(name: str, w: Workload, seed: int = 0) -> Contender:
    """Contender ``name`` for workload ``w``, its parameters initialized from ``seed``."""
    reason = applicable(name, w)
    if reason:
        raise ValueError(f"contender {name!r} cannot run {w.name}: {reason}")
    torch.manual_seed(seed)
    return _BUILDERS[name](w)
