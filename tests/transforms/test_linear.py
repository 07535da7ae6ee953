"""Behaviour of the invertible linear layers: the LU parameterization is the plain matrix it
stands for, the 1x1 convolution applies it at every pixel, and the no-grad weight cache."""

from __future__ import annotations

import pytest
import torch

from pyro_flows.transforms import InvertibleConv1x1, InvertibleLinear

from helpers import perturb

F64 = torch.float64
LAYERS = [(InvertibleLinear, (5,)), (InvertibleConv1x1, (5, 3, 2))]
IDS = ["linear", "conv1x1"]




def apply_matrix(w: torch.Tensor, x: torch.Tensor, rank: int) -> torch.Tensor:
    """``W`` applied to the features of a vector, or to the channels at every pixel."""
    return torch.einsum("ij,...j->...i", w, x) if rank == 1 else torch.einsum("ij,...jhw->...ihw", w, x)


@pytest.mark.parametrize("cls,shape", LAYERS, ids=IDS)
def test_lu_and_plain_parameterizations_agree(cls, shape):
    lu = perturb(cls(shape, lu=True).double(), 0.3)
    w, logdet = lu._matrices(inverse=False)
    plain = cls(shape, lu=False).double()
    with torch.no_grad():
        plain.weight.copy_(w)
    x = torch.randn(4, *shape, dtype=F64)
    y_lu, y_plain = lu(x), plain(x)
    assert torch.allclose(y_lu, y_plain, atol=1e-12, rtol=0)
    assert torch.allclose(y_lu, apply_matrix(w, x, len(shape)), atol=1e-12, rtol=0)
    assert torch.allclose(lu.log_abs_det_jacobian(x, y_lu), plain.log_abs_det_jacobian(x, y_plain),
                          atol=1e-12, rtol=0)
    assert abs(logdet.item()) > 0.1  # the perturbation changed the volume: a real comparison
    y = torch.randn(4, *shape, dtype=F64)
    assert torch.allclose(lu.inv(y), plain.inv(y.clone()), atol=1e-10, rtol=0)


def test_conv1x1_log_det_is_pixels_times_the_matrix_log_det():
    shape = (4, 3, 5)
    x = torch.randn(2, *shape, dtype=F64)
    lu = perturb(InvertibleConv1x1(shape, lu=True).double(), 0.3)
    y = lu(x)
    expected = (15 * lu.log_diag.sum()).expand(2)
    assert torch.allclose(lu.log_abs_det_jacobian(x, y), expected, atol=1e-12, rtol=0)
    plain = perturb(InvertibleConv1x1(shape, lu=False).double(), 0.3)
    y = plain(x)
    expected = (15 * torch.linalg.slogdet(plain.weight)[1]).expand(2)
    assert torch.allclose(plain.log_abs_det_jacobian(x, y), expected, atol=1e-12, rtol=0)
    assert torch.allclose(y, apply_matrix(plain.weight, x, 3), atol=1e-12, rtol=0)


@pytest.mark.parametrize("lu", [True, False])
@pytest.mark.parametrize("cls,shape", LAYERS, ids=IDS)
def test_inverse_weight_times_weight_is_the_identity(cls, shape, lu):
    t = perturb(cls(shape, lu=lu).double(), 0.3)
    w, _ = t._matrices(inverse=False)
    w_inv, _ = t._matrices(inverse=True)
    eye = torch.eye(shape[0], dtype=F64)
    assert torch.allclose(w_inv @ w, eye, atol=1e-12, rtol=0)
    assert torch.allclose(w @ w_inv, eye, atol=1e-12, rtol=0)




def test_no_grad_forward_and_inverse_stay_apart():
    t = perturb(InvertibleLinear(4).double(), 0.3)
    x = torch.randn(3, 4, dtype=F64)
    with torch.no_grad():
        y = t(x)
        x_back = t.inv(y.clone())
        y_again = t(x.clone())
    assert torch.allclose(x_back, x, atol=1e-12, rtol=0)
    assert torch.allclose(y_again, y, atol=1e-12, rtol=0)


def test_a_checkpoint_loaded_with_assign_is_used_at_once():
    t = InvertibleLinear(3, lu=False).double()
    x = torch.randn(2, 3, dtype=F64)
    with torch.no_grad():
        t(x)
        t.load_state_dict({"weight": 2 * torch.eye(3, dtype=F64)}, assign=True)
        assert torch.allclose(t(x.clone()), 2 * x)


@pytest.mark.parametrize("cls, shape", [(InvertibleLinear, (5,)), (InvertibleConv1x1, (4, 3, 2))])
def test_volume_preserving_layer_keeps_log_det_zero_and_still_learns(cls, shape):
    t = cls(shape, volume_preserving=True)
    assert "log_diag" not in dict(t.named_parameters()) and "log_diag" in dict(t.named_buffers())
    x = torch.randn(6, *shape)
    with torch.no_grad():
        before = t(x)
    optim = torch.optim.SGD(t.parameters(), lr=0.05)
    for _ in range(3):  # a loss that wants a bigger volume cannot get it
        optim.zero_grad()
        (-(t(x) ** 2).sum()).backward()
        optim.step()
    y, ladj = t.call_and_ladj(x)
    assert torch.allclose(ladj, torch.zeros(6), atol=1e-5)
    assert not torch.allclose(y, before, atol=1e-3)  # it did learn
    assert torch.allclose(t.inv(y), x, atol=1e-4, rtol=1e-4)


def test_volume_preserving_needs_lu():
    with pytest.raises(ValueError, match="lu=True"):
        InvertibleLinear(3, lu=False, volume_preserving=True)
