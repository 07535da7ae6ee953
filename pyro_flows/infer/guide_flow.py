"""How a registered flow becomes a guide's flow: :func:`build_guide_flow` builds it so that the
guide starts exactly at its Gaussian and learns at a Gaussian guide's pace.

A guide built this way draws the model's unconstrained latents as::

    eps ~ N(0, I)  --affine-->  u = loc + scale * eps  --flow-->  z  --biject_to-->  model sites

At initialization ``flow`` is exactly the identity, so the guide *is* the diagonal Gaussian
guide (``AutoNormal`` / ``AutoDiagonalNormal``) and training starts from that guide's ELBO.
Zero-initialized couplings alone do not give that: the registry's flows also mix coordinates
with fixed permutations (RealNVP) or a random rotation (Glow's invertible linear layer), so
:func:`build_guide_flow` prepends the inverse of that initial mixing (a fixed linear map).
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro.distributions.conditional import ConditionalComposeTransformModule
from pyro.distributions.torch_transform import ComposeTransformModule
from torch import nn
from torch.nn import functional as F

from ..registry import build, entry
from ..transforms import Bijector, Chain, ConditionalBijector
from ..transforms.shapes import check_event_shape

__all__ = ["build_guide_flow", "store_clash"]

# Every guide flow is built from this seed: the param store holds parameters but not buffers
# (Glow's LU permutation and signs, the un-mixing below), so a guide rebuilt from the store
# alone must recreate the very same buffers.
FLOW_SEED = 0


class _FixedLinear(Bijector):
    """``y = x @ weight`` for a fixed invertible matrix, its inverse and log-det precomputed."""

    def __init__(self, weight: torch.Tensor, weight_inv: torch.Tensor) -> None:
        super().__init__(event_dim=1)
        self.register_buffer("weight", weight)
        self.register_buffer("weight_inv", weight_inv)
        self.register_buffer("log_det", torch.linalg.slogdet(weight)[1])

    def call_and_ladj(self, x: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, x, self.weight.shape[:1])
        return x @ self.weight, self.log_det.expand(x.shape[:-1])

    def inverse_and_ladj(self, y: torch.Tensor, context: torch.Tensor | None = None):
        check_event_shape(self, y, self.weight.shape[:1])
        return y @ self.weight_inv, self.log_det.expand(y.shape[:-1])


class _FanInScaledLinear(nn.Linear):
    """A hidden layer whose weight enters divided by its fan-in: ``y = x @ (weight / n).T + b``.

    The same function as the ``Linear`` it replaces (``weight`` holds ``n`` times its values),
    but Adam, which moves every entry of ``weight`` by about the learning rate whatever its
    gradient's size, now moves the layer's outputs by ``lr * mean(|x|)`` rather than
    ``lr * sum(|x|)`` over the ``n`` inputs: Yang et al.'s hidden-layer rate for Adam, ``1 / n``
    ("Tensor Programs V", 2022). That matters most after one outlier gradient, which Adam turns
    into a move of about ``30 lr`` in the outlier's sign over the next ten steps: at full rate
    each unit of a 64-wide hidden layer moves 64 times as far. At full rate the guides went
    non-finite on 11 of 120 runs at lr 0.05 (funnel, eight schools, a hierarchical model, 1,000
    steps), and a wide correlated Gaussian stalled; at ``1 / n`` neither happened
    (benchmarks/RESULTS.md, sixth round).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight / self.in_features, self.bias)


def _fan_in_scaled(layer: nn.Linear) -> _FanInScaledLinear:
    # Same parameter names and the same function; nothing drawn from the random stream.
    scaled = torch.nn.utils.skip_init(_FanInScaledLinear, layer.in_features, layer.out_features,
                                      bias=layer.bias is not None, device=layer.weight.device,
                                      dtype=layer.weight.dtype)
    with torch.no_grad():
        scaled.weight.copy_(layer.weight * layer.in_features)
        if layer.bias is not None:
            scaled.bias.copy_(layer.bias)
    return scaled


class _WidthScaledOutput(nn.Module):
    """A coupling's conditioner whose outputs are divided by its last layer's fan-in.

    The conditioner's zero-initialized last layer is where a guide's first steps go wrong: Adam
    moves each of its weights by about the learning rate, all in the direction of their
    gradient's sign, so an output moves by ``lr * sum(|h|)`` over the ``width`` hidden units.
    At SVI's learning rates (0.05) and a width of 168 that is a log-scale jump of ~8 in one
    step, compounded layer on layer. Divided by the fan-in, an output moves by ``lr * mean(|h|)``:
    a step of the flow is then the size of a step of a diagonal Gaussian guide, whatever the
    width (the output multiplier of Yang et al., "Tensor Programs V", 2022). Density training
    (lr 1e-3) does not need this and learns faster without it, so only guide flows are built so.
    """

    def __init__(self, net: nn.Module, fan_in: int) -> None:
        super().__init__()
        self.net = net
        self.factor = 1.0 / fan_in

    def forward(self, *args: torch.Tensor):
        out = self.net(*args)
        if isinstance(out, (tuple, list)):
            return type(out)(o * self.factor for o in out)
        return out * self.factor


def _guide_rates(flow: nn.Module) -> None:
    """Give every vector coupling's conditioner the step sizes of a Gaussian guide: its outputs
    divided by the last layer's fan-in (:class:`_WidthScaledOutput`) and its hidden layers at a
    ``1 / fan_in`` rate (:class:`_FanInScaledLinear`); the first layer, which reads the
    coupling's input, stays as built."""
    for module in list(flow.modules()):
        net = getattr(module, "net", None)
        if not isinstance(net, nn.Module) or isinstance(net, _WidthScaledOutput):
            continue
        linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            continue
        for name, layer in linears[1:-1]:
            parent, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent), attr, _fan_in_scaled(layer))
        module.net = _WidthScaledOutput(net, linears[-1][1].in_features)


def _unmixing(name: str, flow, dim: int, context_dim: int, like: torch.Tensor) -> _FixedLinear:
    """The inverse of ``flow``'s initial map, which must be linear: ``x -> x @ A``."""
    eye = torch.eye(dim, dtype=like.dtype, device=like.device)
    gen = torch.Generator().manual_seed(FLOW_SEED)
    probe = torch.randn(4, dim, generator=gen, device=gen.device).to(eye)
    with torch.no_grad():
        if context_dim:
            start = flow.condition(eye.new_zeros(context_dim))
            shift = torch.randn(context_dim, generator=gen, device=gen.device)
            other = flow.condition(shift.to(eye))
        else:
            start = other = flow
        mixing = start(eye)  # row i is f(e_i), so f(x) = x @ mixing
        unmixing = start.inv(eye)
        linear = torch.allclose(other(probe), probe @ mixing, rtol=1e-4, atol=1e-4)
    if not linear:
        raise ValueError(
            f"flow {name!r} is not linear at initialization (for every context), so a guide "
            "cannot start at its Gaussian; guide flows need zero-initialized couplings")
    return _FixedLinear(unmixing, mixing)


def store_clash(wanted: dict[str, torch.Size]) -> tuple[str, tuple, tuple] | None:
    """The first of ``wanted``'s names (full param-store names and the shapes a guide needs)
    that Pyro's param store holds at another shape, as ``(name, stored shape, wanted shape)``.
    Registering would hand the guide that tensor (as it must after a reload) and fail later."""
    store = pyro.get_param_store()
    for name, shape in wanted.items():
        if name in store and store[name].shape != shape:
            return name, tuple(store[name].shape), tuple(shape)
    return None


def build_guide_flow(name: str, dim: int, context_dim: int = 0, like: torch.Tensor | None = None,
                     **kwargs: Any) -> nn.Module:
    """A registered vector flow ``name`` on ``(dim,)``, ready to refine a Gaussian guide: it is
    exactly the identity at initialization, never initializes an ActNorm from data, and takes
    steps of the size of a Gaussian guide's at SVI's learning rates (each coupling's conditioner
    output is divided by its width and its hidden layers learn at a ``1 / fan_in`` rate, see
    :class:`_WidthScaledOutput` and :class:`_FanInScaledLinear`).

    Builds ``name`` (``"conditional_" + kind`` when ``context_dim > 0``) from the fixed seed
    ``FLOW_SEED`` without touching the global RNG, on ``like``'s dtype and device, and precedes
    it with the inverse of its initial mixing. A Glow is built without ActNorms and with
    volume-preserving LU mixing (``actnorm=False, volume_preserving=True``; pass them to
    override): the Gaussian is the guide's one free scale per coordinate. ActNorms asked for
    stay the identity they are built as: a guide never initializes from its own draws.

    :param name: a registered flow name, e.g. ``"realnvp"`` or ``"conditional_glow"``.
    :param dim: the size of the vectors the flow acts on.
    :param context_dim: context size for a conditional flow (0: unconditional).
    :param like: a tensor whose dtype and device the flow takes (default: torch's defaults).
    :returns: a :class:`~pyro_flows.transforms.Chain` (a ``ComposeTransformModule`` for a
        plugin flow of other transforms), or its conditional twin when ``context_dim > 0``.

    >>> import torch
    >>> f = build_guide_flow("realnvp", 4)
    >>> x = torch.randn(3, 4)
    >>> torch.equal(f(x), x)
    True
    """
    e = entry(name)
    if e.conditional != bool(context_dim):
        want = "a conditional flow with context_dim > 0" if e.conditional else "context_dim=0"
        raise ValueError(f"flow {name!r} needs {want}, got context_dim={context_dim}")
    if context_dim:
        kwargs["context_dim"] = context_dim
    if name in ("glow", "conditional_glow"):
        # ActNorms and a free LU diagonal would be two more scales per layer beside the
        # Gaussian's: Adam moves each ~lr a step, and their product sent the draws' tails past
        # float range at lr 0.05 (funnel, eight schools, hierarchical model).
        kwargs.setdefault("actnorm", False)
        kwargs.setdefault("volume_preserving", True)
    # Built on the CPU, whose generator the seed reaches, whatever the default device.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.default_generator.manual_seed(FLOW_SEED)
        flow = build(name, event_shape=(dim,), **kwargs)
    _guide_rates(flow)
    like = torch.empty(0) if like is None else like
    flow.to(dtype=like.dtype, device=like.device)
    unmix = _unmixing(name, flow, dim, context_dim, like)
    # One flat chain: one pass per log_prob, and torch need not recompute a nested
    # composition's domain on every distribution built from it.
    if context_dim:
        inner = getattr(flow, "flow", None)
        if isinstance(flow, ConditionalBijector) and isinstance(inner, Chain):
            return ConditionalBijector(Chain([unmix, *inner.parts]), context_dim)
        return ConditionalComposeTransformModule([unmix, flow])
    parts = list(getattr(flow, "parts", [flow]))
    if all(isinstance(p, Bijector) for p in parts):
        return Chain([unmix, *parts])
    return ComposeTransformModule([unmix, *parts])
