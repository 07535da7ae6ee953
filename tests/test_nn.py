"""pyro_flows.nn: the conditioner networks."""

from __future__ import annotations

import pytest
import torch

import pyro_flows.nn
from pyro_flows.nn import ConvNet

F64 = torch.float64


def _outputs_and_grads(net: ConvNet, x: torch.Tensor, context: torch.Tensor | None):
    out = net(x, context) if context is not None else net(x)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    inputs = [x, *net.parameters()] + ([context] if context is not None else [])
    return out, torch.autograd.grad((out * weight).sum(), inputs)


PATHS = {"pixel-products": 0, "image-maps": 10**6}  # IMAGE_MAPS_MAX_WEIGHT_RATIO for each
SHAPES = [(1, 1), (2, 2), (1, 2), (2, 3), (4, 4), (3, 5)]


@pytest.mark.parametrize("path,shape", [("pixel-products", shape) for shape in SHAPES]
                         + [("image-maps", shape) for shape in SHAPES if max(shape) <= 2])
@pytest.mark.parametrize("context_dim,residual", [(0, False), (3, True)])
def test_small_images_as_matmuls_equal_the_convolutions(monkeypatch, path, shape, context_dim,
                                                        residual):
    """On a CPU, on images of at most ``MATMUL_MAX_PIXELS`` pixels, ConvNet computes its layers as
    matrix products over the pixels, or, on at most 2x2 pixels, as dense maps of the whole
    image: the same function, and the same gradients to the input, the context and every
    parameter, as the convolutions (float64, so only the order of the sums differs)."""
    assert shape[0] * shape[1] <= pyro_flows.nn.MATMUL_MAX_PIXELS
    torch.manual_seed(0)
    net = ConvNet(3, 4, hidden_channels=8, context_dim=context_dim, residual=residual).to(F64)
    torch.nn.init.normal_(net.conv_out.weight)  # zero-initialized: would hide the last layer
    x = torch.randn(5, 3, *shape, dtype=F64, requires_grad=True)
    context = torch.randn(5, context_dim, dtype=F64, requires_grad=True) if context_dim else None
    monkeypatch.setattr(pyro_flows.nn, "IMAGE_MAPS_MAX_WEIGHT_RATIO", PATHS[path])
    calls = []
    for name in ("_forward_as_matmuls", "_forward_as_image_maps"):
        method = getattr(ConvNet, name)
        monkeypatch.setattr(ConvNet, name,
                            lambda self, x, m=method, name=name: calls.append(name) or m(self, x))
    as_matmuls = _outputs_and_grads(net, x, context)
    assert calls == ["_forward_as_image_maps" if path == "image-maps" else "_forward_as_matmuls"]
    monkeypatch.setattr(pyro_flows.nn, "MATMUL_MAX_PIXELS", 0)
    as_convolutions = _outputs_and_grads(net, x, context)
    assert len(calls) == 1  # the convolutions ran
    assert as_matmuls[0].shape == as_convolutions[0].shape == (5, 4, *shape)
    assert torch.allclose(as_matmuls[0], as_convolutions[0], atol=1e-12)
    for a, b in zip(as_matmuls[1], as_convolutions[1]):
        assert torch.allclose(a, b, atol=1e-11)


def test_image_maps_are_second_order_differentiable():
    """The dense maps are built from the weights with differentiable products: second-order
    gradients (e.g. a gradient penalty) flow through them."""
    torch.manual_seed(0)
    net = ConvNet(2, 2, hidden_channels=3).to(F64)
    torch.nn.init.normal_(net.conv_out.weight)
    x = torch.randn(4, 2, 2, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, *w: torch.func.functional_call(
        net, dict(zip([n for n, _ in net.named_parameters()], w)), (x,)),
        (x, *[p.detach().requires_grad_() for p in net.parameters()]))


def test_image_maps_are_used_where_their_weights_are_cheap():
    """The dense maps cost (in + out channels) x pixels x hidden to build on every call: a wide
    net on a small batch keeps the neighbourhood products, a large batch takes the maps."""
    net = ConvNet(24, 48, hidden_channels=16)
    calls, maps, products = [], ConvNet._forward_as_image_maps, ConvNet._forward_as_matmuls
    net._forward_as_image_maps = lambda x: calls.append("maps") or maps(net, x)
    net._forward_as_matmuls = lambda x: calls.append("products") or products(net, x)
    ratio = pyro_flows.nn.IMAGE_MAPS_MAX_WEIGHT_RATIO
    small, large = (24 + 48) * 4 // ratio - 1, (24 + 48) * 4 // ratio
    net(torch.randn(small, 24, 2, 2))
    net(torch.randn(large, 24, 2, 2))
    assert calls == ["products", "maps"]


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (3, 5), (4, 4)])
def test_tap_matrix_gathers_the_neighbourhoods_unfold_does(shape):
    """A product with the tap matrix is im2col: entry ``(k, p, q)`` is one exactly where pixel
    ``p`` is tap ``k`` of pixel ``q``, zero past the border, as ``torch.nn.functional.unfold``
    (with padding 1) gathers them."""
    h, w = shape
    x = torch.randn(2, 3, h, w, dtype=F64)
    taps = pyro_flows.nn._tap_matrix(h, w, x)
    assert taps.shape == (9, h * w, h * w) and taps.dtype == F64
    gathered = torch.einsum("ncp,kpq->nckq", x.flatten(2), taps).reshape(2, 27, h * w)
    assert torch.equal(gathered, torch.nn.functional.unfold(x, 3, padding=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
@pytest.mark.parametrize("size", [2, 4], ids=["image-maps", "pixel-products"])
def test_small_images_give_the_same_net_on_cpu_and_cuda(precision, size):
    """The products or dense maps on a CPU and cuDNN's convolutions on a GPU (which keeps them)
    compute the same network: to float rounding in fp32, to bfloat16 rounding under
    bf16-mixed."""
    from pyro_flows.precision import autocast
    torch.manual_seed(0)
    net = ConvNet(3, 4, hidden_channels=32)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x = torch.randn(16, 3, size, size)
    with autocast(precision, "cpu"):
        on_cpu = net(x).float()
    net.cuda()
    with autocast(precision, "cuda"):
        on_cuda = net(x.cuda()).float().cpu()
    # cuDNN may run float32 convolutions in TF32 (10 bits) by default; a wrong network would be
    # off by about the output's size.
    tolerance = 2**-6 if precision == "bf16-mixed" else 2**-7
    assert (on_cpu - on_cuda).abs().max() <= tolerance * on_cpu.abs().max()
