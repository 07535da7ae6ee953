"""A flow as a density model of data: a standard Normal base held in buffers, the flow's
transforms, and the preprocessing that carries discrete data onto the real line::

    density:  data --Preprocessing--> x --flow.inv--> z      log p = log N(z) + log-dets
    sampling: z ~ N(0, T^2) --flow--> x --Preprocessing.inverse--> data

Discrete data are integers ``0 .. levels - 1`` stored as floats (``levels=256`` for 8-bit
pixels, 17 for scikit-learn's digits). They are dequantized, ``v = (x + u) / levels`` with noise
``u`` in ``[0, 1)^D``, and optionally passed through RealNVP's logit,
``y = logit(alpha + (1 - 2 alpha) v)``. For any noise density ``q(u | x)`` on the unit cube,

    log P(x) >= E_q[log p(v) - D log(levels) - log q(u | x)]

(Theis, van den Oord & Bethge, ICLR 2016, for uniform ``q``; Ho et al., "Flow++", ICML 2019, for
a learned ``q``), so :meth:`FlowModel.bits_per_dim` of discrete data is an upper bound on the
bits per discrete value, the figure papers report.
"""

from __future__ import annotations

import math
from typing import Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import ComposeTransform, Transform

from .registry import build, entry
from .transforms.flows import conditional_vector_flow
from .transforms.shapes import check_event_shape

__all__ = ["DEQUANTIZATIONS", "FlowModel", "Preprocessing"]

DEQUANTIZATIONS = ("uniform", "variational", None)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _modules(t: Transform) -> list[nn.Module]:
    """The modules holding ``t``'s parameters: ``t`` itself, the parts of a composition, or the
    transform that ``t`` is the inverse of (``module.inv`` is not a module itself)."""
    if isinstance(t, nn.Module):
        return [t]
    if isinstance(t, ComposeTransform):
        return [m for part in t.parts for m in _modules(part)]
    inverse = t.inv
    return [inverse] if isinstance(inverse, nn.Module) else []


def _event_shape(event_shape: int | Sequence[int]) -> torch.Size:
    shape = torch.Size((event_shape,) if isinstance(event_shape, int) else tuple(event_shape))
    if len(shape) == 0 or any(s < 1 for s in shape):
        raise ValueError(f"event_shape must be a non-empty shape of positive sizes, "
                         f"got {tuple(shape)}")
    return shape


def _sum_event(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.sum(dim=tuple(range(-n, 0)))


def _pull_back(parts, y: torch.Tensor, event_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map data ``y`` through the inverses of ``parts`` (base -> data order) to the base, with
    the summed log-det of the forward maps, in one pass per part.

    Transforms that keep pyro-flows' protocol hand back both at once (``inverse_and_ladj``);
    any other torch transform is asked for ``inv`` and then for its log-det.
    """
    ladj = 0
    for t in reversed(parts):
        if isinstance(t, ComposeTransform):
            y, ld = _pull_back(t.parts, y, event_dim)
        elif callable(getattr(t, "inverse_and_ladj", None)):
            y, ld = t.inverse_and_ladj(y)
        else:
            x = t.inv(y)
            ld = t.log_abs_det_jacobian(x, y)
            y = x
            extra = ld.dim() - (y.dim() - event_dim)  # event dims the log-det still has
            if extra > 0:
                ld = _sum_event(ld, extra)
        ladj = ladj + ld
    return y, ladj


class Preprocessing(nn.Module):
    """Discrete data to the real line: dequantize, rescale to ``[0, 1)``, optionally logit.

    ``forward(data)`` returns ``(x, ladj)`` with ``log P(data) >= log p(x) + ladj`` in
    expectation over the noise, where ``p`` is the flow's density; every log-det is exact.
    ``inverse(x)`` maps flow samples back to data.

    :param event_shape: shape of one datum.
    :param levels: discrete values per element (at least 2).
    :param dequantization: ``"uniform"`` (``u ~ U[0, 1)^D``, Theis et al. 2016),
        ``"variational"`` (``u = sigmoid(h)``, ``h`` from a conditional RealNVP over a Normal
        given the data, trained with the model; Ho et al. 2019) or ``None``: the data already
        carry their noise (values in ``[0, levels)``) and are only rescaled.
    :param logit_alpha: ``alpha`` of RealNVP's logit (Dinh et al. 2017, section 4.1), in
        ``(0, 0.5)``; ``None`` models ``v`` in ``[0, 1)`` directly.
    :param num_layers: couplings of the variational dequantizer.
    :param hidden_dims: MLP widths of the variational dequantizer's couplings.

    >>> import torch
    >>> pre = Preprocessing((3,), levels=256)
    >>> x, ladj = pre(torch.tensor([[0., 128., 255.]]))
    >>> x.shape, ladj.shape
    (torch.Size([1, 3]), torch.Size([1]))
    >>> pre.inverse(torch.tensor([-10., 0., 10.])).tolist()   # floored, clamped to 0 .. 255
    [0.0, 128.0, 255.0]
    """

    def __init__(self, event_shape: int | Sequence[int], levels: int,
                 dequantization: str | None = "uniform", logit_alpha: float | None = 0.01,
                 num_layers: int = 2, hidden_dims: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        self.event_shape = _event_shape(event_shape)
        if int(levels) != levels or levels < 2:
            raise ValueError(f"levels must be an integer of at least 2, got {levels}")
        if dequantization not in DEQUANTIZATIONS:
            raise ValueError(f"dequantization must be one of {DEQUANTIZATIONS}, "
                             f"got {dequantization!r}")
        if logit_alpha is not None and not 0 < logit_alpha < 0.5:
            raise ValueError(f"logit_alpha must be in (0, 0.5) or None, got {logit_alpha}")
        self.levels = int(levels)
        self.dequantization = dequantization
        self.logit_alpha = logit_alpha
        if dequantization == "variational":
            d = self.event_shape.numel()
            self.dequantizer = conditional_vector_flow(
                "realnvp", d, context_dim=d, num_layers=num_layers, hidden_dims=tuple(hidden_dims))

    def check(self, data: torch.Tensor) -> None:
        """Raise a ValueError unless ``data`` hold what this preprocessing expects."""
        if self.dequantization is None:
            if not ((data >= 0) & (data < self.levels)).all():
                raise ValueError(f"dequantized data must lie in [0, {self.levels}), got values in "
                                 f"[{data.min().item()}, {data.max().item()}]")
            return
        if not ((data >= 0) & (data <= self.levels - 1)).all():
            raise ValueError(f"discrete data must be integers in [0, {self.levels - 1}] "
                             f"(levels={self.levels}), got values in "
                             f"[{data.min().item()}, {data.max().item()}]")
        fractional = data != data.floor()
        if fractional.any():
            raise ValueError(f"discrete data must be integers (levels={self.levels}), got "
                             f"non-integers such as {data[fractional][0].item()}")

    def forward(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.event_shape)
        batch = data.shape[: data.dim() - n]
        ladj = data.new_full(batch, -self.event_shape.numel() * math.log(self.levels))
        if self.dequantization == "uniform":
            data = data + torch.rand_like(data)
        elif self.dequantization == "variational":
            u, log_q = self._variational_noise(data)
            data = data + u
            ladj = ladj - log_q
        v = data / self.levels
        if self.logit_alpha is None:
            return v, ladj
        s = self.logit_alpha + (1 - 2 * self.logit_alpha) * v
        log_s, log_1ms = torch.log(s), torch.log1p(-s)
        # d logit(s)/dv = (1 - 2 alpha) / (s (1 - s))
        ladj = ladj + _sum_event(math.log1p(-2 * self.logit_alpha) - log_s - log_1ms, n)
        return log_s - log_1ms, ladj

    def _variational_noise(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u ~ q(u | data)`` and ``log q(u | data)``: ``eps ~ N(0, I)``, ``h = f(eps; data)``,
        ``u = sigmoid(h)``, computed forwards so no sigmoid is ever inverted."""
        flat = data.flatten(data.dim() - len(self.event_shape))
        context = 2 * flat / self.levels - 1  # centred inputs for the conditioner networks
        eps = torch.randn_like(flat)
        f = self.dequantizer.condition(context)
        h = f(eps)
        log_q = ((-0.5 * eps * eps - _HALF_LOG_2PI).sum(-1) - f.log_abs_det_jacobian(eps, h)
                 - (nn.functional.logsigmoid(h) + nn.functional.logsigmoid(-h)).sum(-1))
        return torch.sigmoid(h).reshape(data.shape), log_q

    def inverse(self, x: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Flow samples to data: undo the logit and the rescaling; with ``quantize``, floor and
        clamp to the integers ``0 .. levels - 1``, otherwise return the continuous values."""
        v = x if self.logit_alpha is None else (
            (torch.sigmoid(x) - self.logit_alpha) / (1 - 2 * self.logit_alpha))
        data = v * self.levels
        return data.floor().clamp(0, self.levels - 1) if quantize else data


class FlowModel(nn.Module):
    """A normalizing flow as a model of data: ``log_prob``, ``sample``, ``bits_per_dim``.

    The base is ``Normal(base_loc, base_scale)`` over the latent shape, rebuilt on every call
    from two buffers, so ``.to(device)`` and ``.to(torch.float64)`` move the whole model
    (Pyro's flows keep the base's tensors outside the module; pyro-ppl issue 2761).

    :param transforms: one transform or a list, in Pyro's order (base -> data); the
        ``nn.Module`` ones are registered in ``self.transforms``.
    :param event_shape: shape of one datum.
    :param preprocessing: a :class:`Preprocessing` for discrete data; ``None`` for continuous
        data, whose density the flow models as it is.

    >>> import torch
    >>> model = FlowModel.build("realnvp", (4,), data_levels=17, num_layers=2)
    >>> data = torch.randint(0, 17, (10, 4)).float()
    >>> model.log_prob(data).shape, model.sample(3).shape
    (torch.Size([10]), torch.Size([3, 4]))
    >>> bool(model.bits_per_dim(data).mean() > 0)
    True

    Mixed precision: compute inside :func:`pyro_flows.precision.autocast` (``"bf16-mixed"``,
    ``"fp16-mixed"``); the conditioner networks then run in low precision while the density
    stays exact in float32, the base log-density and the preprocessing included (module
    :mod:`pyro_flows.precision` says when it pays).

    >>> from pyro_flows.precision import autocast
    >>> with autocast("bf16-mixed", "cpu"):
    ...     model.log_prob(data).dtype
    torch.float32
    """

    def __init__(self, transforms: Transform | Sequence[Transform],
                 event_shape: int | Sequence[int],
                 preprocessing: Preprocessing | None = None) -> None:
        super().__init__()
        parts = list(transforms) if isinstance(transforms, (list, tuple)) else [transforms]
        if not parts or not all(isinstance(t, Transform) for t in parts):
            got = [type(t).__name__ for t in parts]
            raise TypeError(f"FlowModel needs one or more torch Transforms (a conditional "
                            f"transform must be conditioned first), got {got or 'none'}")
        self.event_shape = _event_shape(event_shape)
        if preprocessing is not None and preprocessing.event_shape != self.event_shape:
            raise ValueError(f"preprocessing is for event shape "
                             f"{tuple(preprocessing.event_shape)}, the model for "
                             f"{tuple(self.event_shape)}")
        self.transforms = nn.ModuleList([m for t in parts for m in _modules(t)])
        self._parts = parts  # every transform, in order; ModuleList above only holds the modules
        self.preprocessing = preprocessing
        latent = self.event_shape
        for t in reversed(parts):
            latent = t.inverse_shape(latent)
        self.register_buffer("base_loc", torch.zeros(latent))
        self.register_buffer("base_scale", torch.ones(latent))

    @classmethod
    def build(cls, name: str, event_shape: int | Sequence[int], data_levels: int | None = None,
              dequantization: str | None = "uniform", logit_alpha: float | None = 0.01,
              dequantizer: dict | None = None, **flow_kwargs) -> "FlowModel":
        """A model around the registered transform ``name`` (see :func:`pyro_flows.available`).

        :param data_levels: discrete values per element (``256``, ``17``, ...; a
            :class:`~pyro_flows.data.Splits`'s ``levels``); ``None`` for continuous data, for
            which ``dequantization`` and ``logit_alpha`` do not apply.
        :param dequantization: ``"uniform"``, ``"variational"`` or ``None``, see
            :class:`Preprocessing`.
        :param logit_alpha: RealNVP's logit ``alpha``, or ``None`` for no logit. 0.01 rather
            than RealNVP's 0.05: on the digits job it lowers the test bits/dim by 0.05
            (``benchmarks/quality.py``, benchmarks/RESULTS.md).
        :param dequantizer: keyword arguments of the variational dequantizer
            (``num_layers``, ``hidden_dims``).
        :param flow_kwargs: passed to the transform's builder (``num_layers``, ``hidden_dims``,
            ``levels`` (scales of a multi-scale image flow), ``steps``, ``hidden_channels``,
            ...).

        >>> FlowModel.build("glow", (1, 8, 8), data_levels=256, levels=2, steps=2,
        ...                 hidden_channels=8).sample(2).shape
        torch.Size([2, 1, 8, 8])
        """
        if entry(name).conditional:
            raise ValueError(f"{name!r} is a conditional transform; FlowModel models "
                             f"unconditional densities")
        if data_levels is None and dequantization == "variational":
            raise ValueError("variational dequantization needs discrete data: pass data_levels")
        shape = _event_shape(event_shape)
        transform = build(name, tuple(shape), **flow_kwargs)
        data_shape = transform.forward_shape(shape)
        preprocessing = None if data_levels is None else Preprocessing(
            data_shape, data_levels, dequantization, logit_alpha, **(dequantizer or {}))
        return cls(transform, data_shape, preprocessing)

    # -- the distribution ------------------------------------------------------------------
    @property
    def distribution(self) -> dist.TransformedDistribution:
        """The flow's density over preprocessed data, on the module's device and dtype."""
        return self._distribution(1.0)

    def _distribution(self, temperature: float, validate_args: bool | None = None):
        scale = self.base_scale * temperature
        base = dist.Normal(self.base_loc, scale, validate_args=validate_args)
        base = dist.Independent(base, self.base_loc.dim(), validate_args=validate_args)
        return dist.TransformedDistribution(base, self._parts, validate_args=validate_args)

    def _check(self, data: torch.Tensor) -> torch.Tensor:
        """Data as the model computes with them, or a ValueError naming what is wrong."""
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"FlowModel expects a torch.Tensor, got {type(data).__name__}")
        dtype, device = self.base_loc.dtype, self.base_loc.device
        if data.device != device:
            raise ValueError(f"data are on device {data.device} but the model is on {device}; "
                             f"move one of them with .to()")
        if data.is_complex():
            raise ValueError(f"FlowModel models real data, got dtype {data.dtype}")
        if not data.is_floating_point():
            data = data.to(dtype)  # integer pixels are the usual discrete data
        elif data.dtype != dtype:
            raise ValueError(f"data have dtype {data.dtype} but the model computes in {dtype}; "
                             f"convert the data (data.to({dtype})) or the model "
                             f"(model.to({data.dtype}))")
        check_event_shape(self, data, tuple(self.event_shape))
        # Meta tensors have shapes but no values; a compiled graph cannot branch on values.
        if device.type != "meta" and not torch.compiler.is_compiling():
            if not torch.isfinite(data).all():
                raise ValueError("data contain NaN or infinite values")
            if self.preprocessing is not None:
                self.preprocessing.check(data)
        return data

    def log_prob(self, data: torch.Tensor) -> torch.Tensor:
        """Log-density of ``data`` (shape ``batch + event_shape``), of shape ``batch``.

        Continuous data: the exact log-density. Discrete data: a one-sample estimate of the
        dequantization lower bound on ``log P(data)`` (module docstring); maximizing it trains
        the flow and, with ``"variational"``, the dequantizer.
        """
        data = self._check(data)
        if data.numel() == 0:  # torch's Independent.log_prob cannot reshape an empty batch
            return data.new_zeros(data.shape[:data.dim() - len(self.event_shape)])
        if self.preprocessing is None:
            x, ladj = data, 0.0
        else:
            x, ladj = self.preprocessing(data)
        # Inputs are checked above; the distribution's own checks would repeat them and
        # cannot run on meta tensors.
        z, flow_ladj = _pull_back(self._parts, x, len(self.event_shape))
        base = self._distribution(1.0, validate_args=False).base_dist
        return base.log_prob(z) - flow_ladj + ladj

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        """:meth:`log_prob`, so that ``DistributedDataParallel`` and module hooks see it."""
        return self.log_prob(data)

    def bits_per_dim(self, data: torch.Tensor) -> torch.Tensor:
        """``-log p(data) / (D ln 2)`` per example, ``D`` the number of elements of one datum.

        Discrete data: ``-log P`` is bounded above by the negated dequantization bound, so this
        is an upper bound on the bits per discrete value (comparable with published
        bits/dim). Continuous data: the negative log-density in bits per element.
        """
        return -self.log_prob(data) / (self.event_shape.numel() * math.log(2))

    @torch.no_grad()
    def importance_bits_per_dim(self, data: torch.Tensor, k: int = 16) -> torch.Tensor:
        """Importance-weighted estimate of ``-log P(data) / (D ln 2)`` for discrete data, per
        example: ``log P ~ logsumexp_i(b_i) - log k`` over ``k`` independent draws ``b_i`` of the
        dequantization bound (:meth:`log_prob`), uniform or variational. Its expectation is a
        bound that tightens towards the exact bits per discrete value as ``k`` grows (Burda et
        al., "Importance Weighted Autoencoders", 2016), never looser than :meth:`bits_per_dim`.

        :param k: draws of the dequantization noise per example (``k = 16`` in Ho et al. 2019).

        >>> import torch
        >>> model = FlowModel.build("realnvp", (4,), data_levels=17, num_layers=2)
        >>> data = torch.randint(0, 17, (10, 4)).float()
        >>> model.importance_bits_per_dim(data, k=16).shape
        torch.Size([10])
        """
        if self.preprocessing is None or self.preprocessing.dequantization is None:
            raise ValueError("importance_bits_per_dim needs discrete data that the model "
                             "dequantizes (data_levels with dequantization 'uniform' or "
                             "'variational'); use bits_per_dim for continuous data")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        bounds = torch.stack([self.log_prob(data) for _ in range(k)])
        log_p = torch.logsumexp(bounds, dim=0) - math.log(k)
        return -log_p / (self.event_shape.numel() * math.log(2))

    # -- sampling --------------------------------------------------------------------------
    def _draw(self, n: int | Sequence[int], temperature: float) -> torch.Tensor:
        if not temperature >= 0:
            raise ValueError(f"temperature must be non-negative, got {temperature}")
        shape = torch.Size((n,) if isinstance(n, int) else tuple(n))
        # Glow's temperature scales the base; T = 0 is a zero scale, which only validation refuses.
        return self._distribution(float(temperature), validate_args=False).rsample(shape)

    def rsample(self, n: int | Sequence[int], temperature: float = 1.0) -> torch.Tensor:
        """Differentiable samples of shape ``n + event_shape``: base scale times
        ``temperature`` (Kingma & Dhariwal 2018, section 5). Discrete data come back as the
        continuous dequantized values ``levels * v``, not floored (flooring has no gradient)."""
        x = self._draw(n, temperature)
        return x if self.preprocessing is None else self.preprocessing.inverse(x, quantize=False)

    @torch.no_grad()
    def sample(self, n: int | Sequence[int], temperature: float = 1.0) -> torch.Tensor:
        """Samples of shape ``n + event_shape`` at ``temperature``; discrete data are floored and
        clamped to the integers ``0 .. levels - 1`` (returned as floats)."""
        x = self._draw(n, temperature)
        return x if self.preprocessing is None else self.preprocessing.inverse(x)
