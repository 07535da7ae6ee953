"""Conditioner networks. MLPs come from :class:`pyro.nn.DenseNN`; images get Glow's conv net."""

from __future__ import annotations

import warnings

import torch
from pyro.nn import ConditionalDenseNN, DenseNN
from torch import nn
from torch.nn import functional as F

from .precision import full_precision

__all__ = ["ConvNet", "Float32InputLinear", "SplitBFloat16Conv2d", "channels_last", "dense_net",
           "soft_clamp", "zero_last_layer"]


def soft_clamp(raw: torch.Tensor, bound: float) -> torch.Tensor:
    """``bound * tanh(raw / bound)``: the identity near zero, never outside ``(-bound, bound)``.
    Used on every learned log-scale so a bad step cannot produce an infinite or zero scale."""
    return bound * torch.tanh(raw / bound)


def zero_last_layer(net: nn.Module) -> nn.Module:
    """Zero the weights and bias of ``net``'s last ``Linear``/``Conv2d`` so a coupling that
    uses it starts as the identity (Glow, Kingma & Dhariwal 2018, section 3.3)."""
    last = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)
    return net


class Float32InputLinear(nn.Linear):
    """A ``Linear`` that computes in float32 even under autocast: the first layer of a
    conditioner, which reads the conditioning data. Rounded to bfloat16 (8 bits), those inputs
    would make the conditioner a step function of them at the scale of fine detail in the data;
    the layers after it are where the time goes, and they run in low precision.

    >>> from pyro_flows.precision import autocast
    >>> with autocast("bf16-mixed"):
    ...     Float32InputLinear(3, 2)(torch.randn(1, 3)).dtype
    torch.float32
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):
            return super().forward(x.to(self.weight.dtype))


def _float32_input(layer: nn.Linear) -> Float32InputLinear:
    # No initialization of its own: it takes the layer's values, and draws nothing from the
    # random stream (a seeded model is the same as before it was swapped in).
    first = torch.nn.utils.skip_init(Float32InputLinear, layer.in_features, layer.out_features,
                                     bias=layer.bias is not None)
    first.load_state_dict(layer.state_dict())
    return first


def dense_net(
    input_dim: int,
    param_dims: list[int],
    hidden_dims: tuple[int, ...],
    context_dim: int = 0,
) -> nn.Module:
    """A Pyro MLP (``DenseNN``, or ``ConditionalDenseNN`` with a context) whose last layer is
    zero, returning one tensor per entry of ``param_dims``."""
    with warnings.catch_warnings():
        # A coupling of one feature has no conditioning input (input_dim 0): its first layer
        # is then a bias alone, and torch warns that initializing the empty weight does nothing.
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        if context_dim:
            net = ConditionalDenseNN(input_dim, context_dim, list(hidden_dims), param_dims)
        else:
            net = DenseNN(input_dim, list(hidden_dims), param_dims)
        net.layers[0] = _float32_input(net.layers[0])  # same parameter names, same values
    return zero_last_layer(net)


class SplitBFloat16Conv2d(nn.Conv2d):
    """A ``Conv2d`` for the layer that reads the data: under bfloat16 autocast it runs in
    bfloat16 on two-term splits, ``x = x_hi + x_lo`` and ``W = W_hi + W_lo`` with each term in
    bfloat16. Being linear, the layer is ``W_hi x_hi + W_hi x_lo + W_lo x_hi`` (the dropped
    ``W_lo x_lo`` is about 2^-17 of the product, far below the output's bfloat16 rounding): one
    convolution over three times the channels. Inputs and weights keep about 16 significant
    bits instead of bfloat16's 8 (:class:`Float32InputLinear` says why 8 are too few for the
    data); the output is rounded to bfloat16 like every hidden activation. Computed in float32
    instead, this few-channel convolution, its wide float32 output and their backward took
    about a third of a bf16-mixed Glow training step on a CPU. Without autocast, under float16
    (whose range is too narrow for raw data), or with ``groups`` or a padding mode, it is a
    float32 ``Conv2d``.

    >>> from pyro_flows.precision import autocast
    >>> conv = SplitBFloat16Conv2d(2, 3, 3, padding=1)
    >>> x = torch.randn(1, 2, 4, 4)
    >>> with autocast("bf16-mixed"):
    ...     y = conv(x)
    >>> y.dtype, bool(((y.float() - conv(x)).abs() <= 2**-8 * conv(x).abs() + 1e-3).all())
    (torch.bfloat16, True)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups != 1 or self.padding_mode != "zeros" or not _bfloat16_autocast(x):
            with full_precision(x):
                return super().forward(x)
        x_terms, w_terms = _split_operands(x, self.weight, x_dim=-3, w_dim=1)
        return F.conv2d(x_terms, w_terms, self.bias, self.stride, self.padding, self.dilation)


def _bfloat16_autocast(x: torch.Tensor) -> bool:
    """Whether ``x`` is float32 data under bfloat16 autocast on its device."""
    device = x.device.type
    return (x.dtype == torch.float32 and device in ("cpu", "cuda")
            and torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16)


def _split_operands(x: torch.Tensor, w: torch.Tensor, x_dim: int,
                    w_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The operands of one bfloat16 product ``W x`` that keeps about 16 bits of each:
    ``x_hi, x_lo, x_hi`` and ``W_hi, W_hi, W_lo``, concatenated along the summed dimension
    (``x_dim`` of ``x``, ``w_dim`` of ``w``)."""
    x_hi, x_lo = _two_bfloat16_terms(x)
    w_hi, w_lo = _two_bfloat16_terms(w)
    return torch.cat([x_hi, x_lo, x_hi], dim=x_dim), torch.cat([w_hi, w_hi, w_lo], dim=w_dim)


def _data_product(bias: torch.Tensor, data: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``bias + data @ weight`` for the layer that reads the data: under bfloat16 autocast on
    the 16-bit splits of :class:`SplitBFloat16Conv2d`, otherwise in float32."""
    if _bfloat16_autocast(data):
        return torch.addmm(bias, *_split_operands(data, weight, x_dim=1, w_dim=0))
    with full_precision(data):
        return torch.addmm(bias, data, weight)


def _two_bfloat16_terms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` in bfloat16 with ``hi + lo = x`` to about 16 significant bits."""
    hi = x.to(torch.bfloat16)
    return hi, (x - hi.to(x.dtype)).to(torch.bfloat16)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``N, C, H, W``) laid out channels-last, the layout oneDNN's and cuDNN's fastest
    convolutions work in; a no-op when it already is. Convolutions on an NCHW input would
    reorder their wide hidden activations on every call, forward and backward."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


# On a CPU, images of at most this many pixels run their conditioner as matrix products
# (ConvNet._forward_as_matmuls): oneDNN's direct convolutions to or from a few channels are slow
# on them, and the pixel-major layout lets the ReLUs work in place. Only measured on CPUs: other
# devices keep their convolution libraries.
MATMUL_MAX_PIXELS = 16

# On an image of at most 2x2 pixels every pixel is in every other's 3x3 neighbourhood, so each
# 3x3 convolution is one dense map of the whole image (ConvNet._forward_as_image_maps), with no
# multiplications by the zero padding. Building the dense weights costs about (in + out
# channels) x pixels x hidden channels, paid once per call, so they are used when that is at
# most this many times the hidden activations (batch x hidden channels). Measured on one CPU
# thread: 1.2-2.0x faster fwd+bwd for Glow's 2x2 and 1x1 levels with 64-128 hidden channels from
# batch 8 to 256; 0.7-0.9x for 24 -> 256 -> 48 channels at batch 8-32, 1.1-1.5x at batch 128-256.
IMAGE_MAPS_MAX_WEIGHT_RATIO = 8


def _tap_matrix(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """``(9, P, P)`` zeros and ones for an image of ``P = height * width`` pixels: entry
    ``(k, p, q)`` is one where pixel ``p`` is tap ``k`` of pixel ``q``'s 3x3 neighbourhood (``k``
    in the order of a kernel's last two dimensions; none past the border). A product with it
    gathers every pixel's neighbourhood (im2col), its transpose adds taps back where they land
    (col2im), and a kernel times it is the dense map of the whole image. It is the
    neighbourhoods of the identity image.

    >>> _tap_matrix(1, 2, torch.zeros(()))[[3, 4, 5]]  # left, centre, right taps of a 1x2 image
    tensor([[[0., 1.],
             [0., 0.]],
    <BLANKLINE>
            [[1., 0.],
             [0., 1.]],
    <BLANKLINE>
            [[0., 0.],
             [1., 0.]]])
    """
    pixels = height * width
    eye = torch.eye(pixels, dtype=like.dtype, device=like.device).view(pixels, height, width)
    padded = F.pad(eye, (1, 1, 1, 1))
    return torch.stack([padded[:, a:a + height, b:b + width] for a in range(3) for b in range(3)]
                       ).flatten(2)


class ConvNet(nn.Module):
    """Glow's coupling network: 3x3 conv -> ReLU -> 1x1 conv -> ReLU -> zero-initialized 3x3 conv.

    :param in_channels: channels of the conditioning half.
    :param out_channels: channels produced (e.g. ``2 * C2`` for shift and log-scale).
    :param hidden_channels: width of the hidden layers (512 in the Glow paper).
    :param context_dim: size of a context vector broadcast over the image and concatenated to
        the input (0 for none).
    :param residual: add a skip connection around the 1x1 layer.

    Inputs are ``(N, C, H, W)``; a context is ``(N, context_dim)``. Under bfloat16 autocast
    the first layer, which reads the data, keeps about 16 bits of its input and weights
    (:class:`SplitBFloat16Conv2d`); the other layers compute in bfloat16. The weights and hidden
    activations are kept channels-last (:func:`channels_last`): a Glow training step takes 23 %
    less time on one CPU thread, with the same outputs up to float rounding. On a CPU, on images
    of at most ``MATMUL_MAX_PIXELS`` (16) pixels (a Glow's coarse levels), the same layers run as
    three matrix products over the pixels instead of convolutions, which are slow there, and on
    images of at most 2x2 pixels as dense maps of the whole image when the batch is large enough
    (``IMAGE_MAPS_MAX_WEIGHT_RATIO``); the output is the same up to float rounding (in float32
    under autocast, where the convolutions give bfloat16).

    >>> net = ConvNet(2, 4, hidden_channels=8)
    >>> net(torch.randn(5, 2, 4, 4)).shape
    torch.Size([5, 4, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 128,
        context_dim: int = 0,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.residual = residual
        self.conv_in = SplitBFloat16Conv2d(in_channels + context_dim, hidden_channels, 3, padding=1)
        self.conv_hidden = nn.Conv2d(hidden_channels, hidden_channels, 1)
        self.conv_out = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        zero_last_layer(self)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_dim:
            if context is None:
                raise ValueError("this network was built with a context; pass one")
            c = context[..., None, None].expand(*context.shape, *x.shape[-2:])
            x = torch.cat([x, c], dim=-3)
        height, width = x.shape[-2:]
        if x.device.type == "cpu" and height * width <= MATMUL_MAX_PIXELS:
            maps_size = (x.shape[-3] + self.conv_out.out_channels) * height * width
            cheap_maps = maps_size <= IMAGE_MAPS_MAX_WEIGHT_RATIO * x.shape[0]
            if height <= 2 and width <= 2 and cheap_maps:
                return self._forward_as_image_maps(x)
            return self._forward_as_matmuls(x)
        h = torch.relu(self.conv_in(channels_last(x)))
        g = torch.relu(self.conv_hidden(h))
        h = h + g if self.residual else g
        # Back to the caller's layout: the output is small (shift and scale of one half).
        return self.conv_out(h).contiguous()

    def _forward_as_matmuls(self, x: torch.Tensor) -> torch.Tensor:
        # The same layers as three matrix products over pixels. The first reads each pixel's 3x3
        # neighbourhood of the few input channels; the last maps every pixel to its nine taps'
        # contributions to the few output channels, which are added where they land. Gathering
        # and adding are products with the tap matrix, exact in float32 (each entry of the
        # gather is one input; each sum adds nine taps in the input's precision, where rounded
        # to bfloat16 they would double the error). The hidden activations are (pixels,
        # channels) matrices, so the ReLUs can run in place.
        n, channels, height, width = x.shape
        pixels, hidden = height * width, self.conv_hidden.out_channels
        taps = _tap_matrix(height, width, x)
        with full_precision(x):
            cols = x.reshape(n * channels, pixels) @ taps.permute(1, 2, 0).reshape(pixels, -1)
        cols = cols.view(n, channels, pixels, 9).transpose(1, 2).reshape(n * pixels, channels * 9)
        w_in = self.conv_in.weight.reshape(hidden, channels * 9).t()
        h = self._hidden_layer(torch.relu_(_data_product(self.conv_in.bias, cols, w_in)))
        w_out = self.conv_out.weight.transpose(0, 1).reshape(hidden, -1)  # (hidden, out * 9)
        contributions = torch.mm(h, w_out).to(x.dtype).view(n, pixels, -1, 9).transpose(1, 2)
        with full_precision(x):
            added = taps.permute(1, 0, 2).reshape(pixels * 9, pixels)
            out = contributions.reshape(-1, pixels * 9) @ added
        return out.view(n, -1, height, width) + self.conv_out.bias[:, None, None]

    def _hidden_layer(self, h: torch.Tensor) -> torch.Tensor:
        # The 1x1 layer on (pixels, channels) activations, its ReLU in place.
        w_hidden = self.conv_hidden.weight.flatten(1).t()
        g = torch.relu_(torch.addmm(self.conv_hidden.bias, h, w_hidden))
        return h + g if self.residual else g

    def _forward_as_image_maps(self, x: torch.Tensor) -> torch.Tensor:
        # On at most 2x2 pixels: the 3x3 layers as dense maps of the whole image, which read the
        # (N, C * P) input and write the (N, C_out * P) output in the caller's layout. The hidden
        # activations are (N * P, hidden) as on the other path.
        n, channels, height, width = x.shape
        pixels, hidden = height * width, self.conv_hidden.out_channels
        with full_precision(x):  # the maps hold the weights exactly; autocast rounds them at use
            taps = _tap_matrix(height, width, self.conv_in.weight).flatten(1)
            w_in = (self.conv_in.weight.reshape(-1, 9) @ taps).view(hidden, channels, pixels, -1)
            w_in = w_in.permute(1, 2, 3, 0).reshape(channels * pixels, pixels * hidden)
            w_out = (self.conv_out.weight.reshape(-1, 9) @ taps).view(-1, hidden, pixels, pixels)
            w_out = w_out.permute(2, 1, 0, 3).reshape(pixels * hidden, -1)
        image, b_in = x.reshape(n, channels * pixels), self.conv_in.bias.repeat(pixels)
        h = torch.relu_(_data_product(b_in, image, w_in)).view(n * pixels, hidden)
        h = self._hidden_layer(h)
        out = torch.mm(h.view(n, pixels * hidden), w_out)
        return out.to(x.dtype).view(n, -1, height, width) + self.conv_out.bias[:, None, None]
