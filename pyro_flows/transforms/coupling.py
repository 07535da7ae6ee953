"""Coupling layers: NICE's additive coupling and RealNVP's affine coupling, with their masks.

A coupling splits its input into a conditioning part ``x1`` that passes through unchanged and a
part ``x2`` that is transformed elementwise with parameters computed from ``x1``::

    additive (NICE):    y2 = x2 + t(x1)                 log|det| = 0
    affine (RealNVP):   y2 = x2 * exp(s(x1)) + t(x1)    log|det| = sum(s)

Masks choose the split. Vectors ``(D,)``: ``"half"`` (first half conditions) or ``"parity"``
(even indices condition). Images ``(C, H, W)``: ``"channel"`` (first half of the channels
conditions) or ``"checkerboard"`` (pixels with even ``h + w`` condition). ``swap=True`` exchanges
the roles, so alternating it between layers transforms every coordinate.
"""

from __future__ import annotations

import torch

from ..nn import ConvNet, dense_net, soft_clamp
from .base import Bijector
from .conditional import ConditionalBijector
from .memory import rebuild_by_inversion
from .shapes import as_event_shape, check_event_shape

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "ConditionalAdditiveCoupling",
    "ConditionalAffineCoupling",
    "additive_coupling",
    "affine_coupling",
    "conditional_additive_coupling",
    "conditional_affine_coupling",
    "default_hidden_dims",
]

VECTOR_MASKS = ("half", "parity")
IMAGE_MASKS = ("channel", "checkerboard")


def default_hidden_dims(input_dim: int) -> tuple[int, int]:
    """Two hidden layers, wide enough for small inputs and growing with the input size."""
    return (max(64, 4 * input_dim),) * 2


class _Coupling(Bijector):
    """Mask bookkeeping and the conditioner; subclasses define the elementwise map."""

    num_params: int  # tensors the conditioner returns per transformed element

    def __init__(
        self,
        event_shape: int | tuple[int, ...],
        mask: str | None = None,
        swap: bool = False,
        hidden_dims: tuple[int, ...] | None = None,
        hidden_channels: int = 64,
        context_dim: int = 0,
        residual: bool = False,
        split_dim: int | None = None,
    ) -> None:
        self.event_shape = as_event_shape(event_shape)
        super().__init__(event_dim=len(self.event_shape))
        self.context_dim = context_dim
        image = len(self.event_shape) == 3
        mask = mask or ("channel" if image else "half")
        allowed = IMAGE_MASKS if image else VECTOR_MASKS
        if mask not in allowed:
            raise ValueError(f"mask {mask!r} does not apply to event shape {self.event_shape}; "
                             f"use one of {allowed}")
        self.mask, self.swap = mask, swap
        self.checkerboard = mask == "checkerboard"
        if self.checkerboard:
            c, h, w = self.event_shape
            if h * w < 2:
                raise ValueError(f"a checkerboard mask needs at least 2 pixels, got {self.event_shape}")
            parity = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2
            self.register_buffer("pixel_mask", (parity == int(swap)).to(torch.get_default_dtype())[None])
            self.net = ConvNet(c, self.num_params * c, hidden_channels, context_dim, residual)
            return
        self.split_dim = -3 if image else -1
        n = self.event_shape[0]
        if image and n < 2:
            raise ValueError(f"a 'channel' mask needs at least 2 channels, got event shape "
                             f"{self.event_shape}; use mask='checkerboard'")
        if split_dim is not None and (image or mask != "half" or not 0 <= split_dim < n):
            raise ValueError(f"split_dim (features that condition) applies to the 'half' mask "
                             f"of vectors and must be in [0, {n}), got {split_dim}")
        idx = torch.arange(n)
        if n == 1:
            # One feature: the conditioner sees only the context (or nothing), which makes the
            # layer a learned elementwise affine map. swap has nothing to exchange.
            first, swap = idx < 0, False
        elif mask == "parity":
            first = idx % 2 == 0
        else:
            first = idx < ((n + 1) // 2 if split_dim is None else split_dim)
        cond, trans = (idx[~first], idx[first]) if swap else (idx[first], idx[~first])
        self.register_buffer("cond_index", cond)
        self.register_buffer("trans_index", trans)
        self.register_buffer("merge_index", torch.argsort(torch.cat([cond, trans])))
        # A contiguous split is a pair of views; only "parity" needs a gather.
        self.contiguous = mask == "half" or mask == "channel"
        n1, n2 = len(cond), len(trans)
        if image:
            self.net = ConvNet(n1, self.num_params * n2, hidden_channels, context_dim, residual)
        else:
            hidden = tuple(hidden_dims) if hidden_dims else default_hidden_dims(n)
            self.net = dense_net(n1, [n2] * self.num_params, hidden, context_dim)

    # -- the split ------------------------------------------------------------------------
    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.contiguous:
            n1 = self.cond_index.numel()
            n2 = self.trans_index.numel()
            a, b = x.split([n2, n1] if self.swap else [n1, n2], dim=self.split_dim)
            return (b, a) if self.swap else (a, b)
        return x.index_select(self.split_dim, self.cond_index), x.index_select(
            self.split_dim, self.trans_index
        )

    def _merge(self, x1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        if self.contiguous:
            return torch.cat([y2, x1] if self.swap else [x1, y2], dim=self.split_dim)
        return torch.cat([x1, y2], dim=self.split_dim).index_select(self.split_dim, self.merge_index)

    def _params(self, x1: torch.Tensor, context: torch.Tensor | None) -> list[torch.Tensor]:
        """Conditioner outputs for the conditioning part ``x1`` (batch dims flattened for convs)."""
        if self.context_dim and context is None:
            raise ValueError(f"{type(self).__name__} was built with context_dim="
                             f"{self.context_dim}; call .condition(context) first")
        # Under autocast the network computes in low precision; its output is taken back to
        # the input's dtype before any of the invertible arithmetic, which both directions then
        # do alike on the same values (pyro_flows.precision).
        if len(self.event_shape) == 1:
            out = self.net(x1, context) if self.context_dim else self.net(x1)
            out = list(out) if self.num_params > 1 else [out]
            return [p.to(x1.dtype) for p in out]
        batch = x1.shape[:-3]
        flat = x1.reshape(-1, *x1.shape[-3:])
        ctx = context.reshape(-1, context.shape[-1]) if self.context_dim else None
        out = self.net(flat, ctx).to(x1.dtype)
        return [p.reshape(*batch, *p.shape[-3:]) for p in out.chunk(self.num_params, dim=-3)]

    def _broadcast(self, x: torch.Tensor, context: torch.Tensor | None):
        check_event_shape(self, x, self.event_shape)
        if context is None:
            return x, None
        e = len(self.event_shape)
        batch = torch.broadcast_shapes(x.shape[: x.dim() - e], context.shape[:-1])
        return x.expand(*batch, *self.event_shape), context.expand(*batch, context.shape[-1])

    def _sum_event(self, t: torch.Tensor) -> torch.Tensor:
        return t.sum(dim=tuple(range(-len(self.event_shape), 0)))

    def call_and_ladj(self, x: torch.Tensor, context: torch.Tensor | None = None):
        x, context = self._broadcast(x, context)
        if self.checkerboard:
            params = [p * (1 - self.pixel_mask) for p in self._params(x * self.pixel_mask, context)]
            y, ladj = self._elementwise(x, params)
            return y, self._sum_event(ladj) if ladj is not None else x.new_zeros(x.shape[:-3])
        x1, x2 = self._split(x)
        y2, ladj = self._elementwise(x2, self._params(x1, context))
        zero = x.new_zeros(x.shape[: x.dim() - len(self.event_shape)])
        return self._merge(x1, y2), self._sum_event(ladj) if ladj is not None else zero

    def inverse_and_ladj(self, y: torch.Tensor, context: torch.Tensor | None = None):
        y, context = self._broadcast(y, context)
        if self.checkerboard:
            params = [p * (1 - self.pixel_mask) for p in self._params(y * self.pixel_mask, context)]
            x, ladj = self._elementwise_inverse(y, params)
            return x, self._sum_event(ladj) if ladj is not None else y.new_zeros(y.shape[:-3])
        y1, y2 = self._split(y)
        x2, ladj = self._elementwise_inverse(y2, self._params(y1, context))
        zero = y.new_zeros(y.shape[: y.dim() - len(self.event_shape)])
        return self._merge(y1, x2), self._sum_event(ladj) if ladj is not None else zero

    def rebuild(self, out: torch.Tensor, context: torch.Tensor | None, inverse: bool):
        """For memory-saving backprop (:func:`~pyro_flows.transforms.memory.rebuild`): the
        conditioning half passes through unchanged, so one conditioner evaluation serves both
        to rebuild the transformed half and to rerun the layer with a graph."""
        if self.checkerboard:
            return rebuild_by_inversion(self, out, context, inverse)
        with torch.enable_grad():  # as both directions do; the context's gradient flows back
            out, context = self._broadcast(out, context)
        o1, o2 = self._split(out)
        x1 = o1.detach().requires_grad_()
        with torch.enable_grad():
            params = self._params(x1, context)
        with torch.no_grad():
            fixed = [p.detach() for p in params]
            undo = self._elementwise if inverse else self._elementwise_inverse
            x2 = undo(o2, fixed)[0].requires_grad_()
        with torch.enable_grad():
            redo = self._elementwise_inverse if inverse else self._elementwise
            y2, ladj = redo(x2, params)
            y = self._merge(x1, y2)
            batch = y.shape[: y.dim() - len(self.event_shape)]
            ladj = self._sum_event(ladj) if ladj is not None else y.new_zeros(batch)
        return [x1, x2], y, ladj, lambda parts: self._merge(*parts)

    def _elementwise(self, x2, params):
        raise NotImplementedError

    def _elementwise_inverse(self, y2, params):
        raise NotImplementedError


class AdditiveCoupling(_Coupling):
    """NICE's additive coupling ``y2 = x2 + t(x1)``, volume preserving (log-det 0).

    Dinh, Krueger & Bengio, "NICE: Non-linear Independent Components Estimation", ICLR 2015.

    :param event_shape: ``D`` or ``(D,)`` for vectors, ``(C, H, W)`` for images.
    :param mask: ``"half"``/``"parity"`` (vectors) or ``"channel"``/``"checkerboard"`` (images).
    :param swap: exchange the conditioning and transformed parts.
    :param hidden_dims: MLP widths for vectors (default two layers of ``max(64, 4D)``).
    :param hidden_channels: conv-net width for images.
    :param residual: use the residual variant of the image conv net.

    >>> import torch, pyro.distributions as dist
    >>> t = AdditiveCoupling(4)
    >>> flow = dist.TransformedDistribution(dist.Normal(torch.zeros(4), 1.).to_event(1), [t])
    >>> flow.log_prob(torch.randn(10, 4)).shape
    torch.Size([10])
    """

    num_params = 1

    def _elementwise(self, x2, params):
        return x2 + params[0], None

    def _elementwise_inverse(self, y2, params):
        return y2 - params[0], None


class AffineCoupling(_Coupling):
    """RealNVP's affine coupling ``y2 = x2 * exp(s(x1)) + t(x1)`` with log-det ``sum(s)``.

    Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.

    The log-scale is bounded smoothly, ``s = b * tanh(raw / b)`` with ``b = scale_bound``: near
    zero it is the identity (so a zero-initialized network gives ``y = x``), and no step of
    training can produce a scale outside ``[exp(-b), exp(b)]``, which is what keeps deep flows
    from blowing up. Parameters as in :class:`AdditiveCoupling`, plus ``scale_bound``.

    >>> import torch
    >>> t = AffineCoupling((2, 4, 4), mask="checkerboard")
    >>> x = torch.randn(3, 2, 4, 4)
    >>> torch.allclose(t.inv(t(x)), x, atol=1e-5)
    True
    """

    num_params = 2

    def __init__(self, *args, scale_bound: float = 3.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if scale_bound <= 0:
            raise ValueError(f"scale_bound must be positive, got {scale_bound}")
        self.scale_bound = float(scale_bound)

    def _elementwise(self, x2, params):
        s = soft_clamp(params[0], self.scale_bound)
        return x2 * torch.exp(s) + params[1], s

    def _elementwise_inverse(self, y2, params):
        s = soft_clamp(params[0], self.scale_bound)
        return (y2 - params[1]) * torch.exp(-s), s


class ConditionalAdditiveCoupling(ConditionalBijector):
    """:class:`AdditiveCoupling` whose conditioner also sees a context vector; keyword
    arguments as for :class:`AdditiveCoupling`. With one feature the conditioner sees only the
    context.

    >>> import torch
    >>> t = ConditionalAdditiveCoupling(4, context_dim=3)
    >>> t.condition(torch.randn(3))(torch.randn(5, 4)).shape
    torch.Size([5, 4])
    """

    def __init__(self, event_shape, context_dim: int, **kwargs) -> None:
        super().__init__(AdditiveCoupling(event_shape, context_dim=context_dim, **kwargs), context_dim)


class ConditionalAffineCoupling(ConditionalBijector):
    """:class:`AffineCoupling` whose conditioner also sees a context vector; keyword arguments
    as for :class:`AffineCoupling`. With one feature the conditioner sees only the context.

    >>> import torch
    >>> t = ConditionalAffineCoupling((2, 4, 4), context_dim=3)
    >>> t.condition(torch.randn(5, 3))(torch.randn(5, 2, 4, 4)).shape
    torch.Size([5, 2, 4, 4])
    """

    def __init__(self, event_shape, context_dim: int, **kwargs) -> None:
        super().__init__(AffineCoupling(event_shape, context_dim=context_dim, **kwargs), context_dim)


def _coupling_options(input_dim, hidden_dims, split_dim, dim, kwargs) -> dict:
    """Pyro's factory arguments as this package's: ``dim`` must be the last one (images are
    given by their ``(C, H, W)`` shape instead)."""
    if dim != -1:
        raise ValueError(f"dim={dim} is not supported: vectors couple along their last "
                         "dimension; for images pass input_dim=(C, H, W)")
    if hidden_dims is not None:
        kwargs["hidden_dims"] = hidden_dims
    if split_dim is not None:
        kwargs["split_dim"] = split_dim
    return kwargs


def additive_coupling(input_dim, hidden_dims=None, split_dim=None, dim=-1,
                      **kwargs) -> AdditiveCoupling:
    """Factory for :class:`AdditiveCoupling` with the signature of Pyro's
    ``affine_coupling``: ``input_dim`` is ``D`` (or ``(C, H, W)``), ``split_dim`` the number
    of features that condition (default ``ceil(D / 2)``)."""
    return AdditiveCoupling(input_dim, **_coupling_options(input_dim, hidden_dims, split_dim,
                                                           dim, kwargs))


def affine_coupling(input_dim, hidden_dims=None, split_dim=None, dim=-1,
                    **kwargs) -> AffineCoupling:
    """Factory for :class:`AffineCoupling` with Pyro's signature (``pyro.distributions.
    transforms.affine_coupling``): ``input_dim`` is ``D`` (or ``(C, H, W)``), ``hidden_dims``
    the MLP widths, ``split_dim`` the number of features that condition.

    >>> import torch
    >>> affine_coupling(4, [16, 16], split_dim=1)(torch.zeros(2, 4)).shape
    torch.Size([2, 4])
    """
    return AffineCoupling(input_dim, **_coupling_options(input_dim, hidden_dims, split_dim,
                                                         dim, kwargs))


def conditional_additive_coupling(input_dim, context_dim: int, hidden_dims=None, split_dim=None,
                                  dim=-1, **kwargs) -> ConditionalAdditiveCoupling:
    """Factory for :class:`ConditionalAdditiveCoupling`, Pyro-style arguments."""
    return ConditionalAdditiveCoupling(
        input_dim, context_dim, **_coupling_options(input_dim, hidden_dims, split_dim, dim, kwargs))


def conditional_affine_coupling(input_dim, context_dim: int, hidden_dims=None, split_dim=None,
                                dim=-1, **kwargs) -> ConditionalAffineCoupling:
    """Factory for :class:`ConditionalAffineCoupling` with the signature of Pyro's
    ``conditional_affine_coupling``.

    >>> import torch
    >>> t = conditional_affine_coupling(1, 1)   # one feature: conditioned on the context only
    >>> t.condition(torch.ones(1))(torch.zeros(3, 1)).shape
    torch.Size([3, 1])
    """
    return ConditionalAffineCoupling(
        input_dim, context_dim, **_coupling_options(input_dim, hidden_dims, split_dim, dim, kwargs))
