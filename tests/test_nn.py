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


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (2, 3), (4, 4), (3, 5)])
@pytest.mark.parametrize("context_dim,residual", [(0, False), (3, True)])
def test_small_images_as_matmuls_equal_the_convolutions(monkeypatch, shape, context_dim, residual):
    """On a CPU, on images of at most ``MATMUL_MAX_PIXELS`` pixels, ConvNet computes its layers as
    matrix products over the pixels: the same function, and the same gradients to the input,
    the context and every parameter, as the convolutions (float64, so only the order of the
    sums differs)."""
    assert shape[0] * shape[1] <= pyro_flows.nn.MATMUL_MAX_PIXELS
    torch.manual_seed(0)
    net = ConvNet(3, 4, hidden_channels=8, context_dim=context_dim, residual=residual).to(F64)
    torch.nn.init.normal_(net.conv_out.weight)  # zero-initialized: would hide the last layer
    x = torch.randn(5, 3, *shape, dtype=F64, requires_grad=True)
    context = torch.randn(5, context_dim, dtype=F64, requires_grad=True) if context_dim else None
    as_matmuls = _outputs_and_grads(net, x, context)
    monkeypatch.setattr(pyro_flows.nn, "MATMUL_MAX_PIXELS", 0)
    as_convolutions = _outputs_and_grads(net, x, context)
    assert as_matmuls[0].shape == as_convolutions[0].shape == (5, 4, *shape)
    assert torch.allclose(as_matmuls[0], as_convolutions[0], atol=1e-12)
    for a, b in zip(as_matmuls[1], as_convolutions[1]):
        assert torch.allclose(a, b, atol=1e-11)


def test_neighbour_sum_is_the_adjoint_of_neighbourhoods():
    """col2im is the adjoint of im2col with the taps reversed, and its hand-written backward
    is differentiable again (second-order gradients)."""
    torch.manual_seed(0)
    z = torch.randn(2, 3, 4, 9, 2, dtype=F64, requires_grad=True)
    y = torch.randn(2, 3, 4, 2, dtype=F64)
    summed = pyro_flows.nn._SumNeighbours.apply(z)
    adjoint = (summed * y).sum() - (z * pyro_flows.nn._neighbourhoods(y, flipped=True)).sum()
    assert abs(adjoint.item()) < 1e-12
    assert torch.autograd.gradcheck(pyro_flows.nn._SumNeighbours.apply, (z,))
    assert torch.autograd.gradgradcheck(pyro_flows.nn._SumNeighbours.apply, (z,))


def test_neighbourhoods_are_the_kernel_taps():
    """Tap ``k = 3a + b`` of pixel ``(i, j)`` is pixel ``(i + a - 1, j + b - 1)``, zero past the
    border; ``flipped`` reverses the taps."""
    x = torch.arange(1.0, 13.0).view(1, 3, 4, 1)
    taps = pyro_flows.nn._neighbourhoods(x)[0, ..., 0]
    padded = torch.nn.functional.pad(x[0, ..., 0], (1, 1, 1, 1))
    for i in range(3):
        for j in range(4):
            assert torch.equal(taps[i, j], padded[i:i + 3, j:j + 3].flatten())
    flipped = pyro_flows.nn._neighbourhoods(x, flipped=True)
    assert torch.equal(flipped, taps.flip(-1)[None, ..., None])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_small_images_give_the_same_net_on_cpu_and_cuda(precision):
    """The products on a CPU and cuDNN's convolutions on a GPU (which keeps them) compute the
    same network: to float rounding in fp32, to bfloat16 rounding under bf16-mixed."""
    from pyro_flows.precision import autocast
    torch.manual_seed(0)
    net = ConvNet(3, 4, hidden_channels=32)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x = torch.randn(16, 3, 4, 4)
    with autocast(precision, "cpu"):
        on_cpu = net(x).float()
    net.cuda()
    with autocast(precision, "cuda"):
        on_cuda = net(x.cuda()).float().cpu()
    # cuDNN may run float32 convolutions in TF32 (10 bits) by default; a wrong network would be
    # off by about the output's size.
    tolerance = 2**-6 if precision == "bf16-mixed" else 2**-7
    assert (on_cpu - on_cuda).abs().max() <= tolerance * on_cpu.abs().max()
