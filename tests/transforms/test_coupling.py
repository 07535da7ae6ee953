"""Behaviour of the coupling layers: which part each mask leaves alone, the identity start, the
bounded log-scale, the errors, and how the conditional twins use and broadcast their context."""

from __future__ import annotations

import pytest
import torch

from pyro_flows.transforms import (
    AdditiveCoupling,
    AffineCoupling,
    ConditionalAdditiveCoupling,
    ConditionalAffineCoupling,
)

COUPLINGS = [AdditiveCoupling, AffineCoupling]
CONDITIONALS = [ConditionalAdditiveCoupling, ConditionalAffineCoupling]
VECTOR = (6,)
IMAGE = (4, 4, 4)


def perturb(module: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its initial value: zero-initialized last layers would make every
    coupling the identity, and every test below trivially true."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def conditioning_part(shape: tuple[int, ...], mask: str, swap: bool) -> torch.Tensor:
    """The elements that pass through unchanged, written from the documented mask semantics."""
    if mask == "half":
        cond = torch.arange(shape[0]) < shape[0] // 2
    elif mask == "parity":
        cond = torch.arange(shape[0]) % 2 == 0
    elif mask == "channel":
        cond = (torch.arange(shape[0]) < shape[0] // 2)[:, None, None].expand(shape)
    else:
        h, w = torch.arange(shape[1])[:, None], torch.arange(shape[2])[None, :]
        cond = ((h + w) % 2 == 0)[None].expand(shape)
    return ~cond if swap else cond


MASK_CASES = [
    pytest.param(shape, mask, swap, id=f"{mask}-swap{int(swap)}")
    for shape, masks in [(VECTOR, ("half", "parity")), (IMAGE, ("channel", "checkerboard"))]
    for mask in masks
    for swap in (False, True)
]


@pytest.mark.parametrize("cls", COUPLINGS)
@pytest.mark.parametrize("shape,mask,swap", MASK_CASES)
def test_mask_keeps_the_conditioning_part_and_changes_the_rest(cls, shape, mask, swap):
    t = perturb(cls(shape, mask=mask, swap=swap, hidden_dims=(16,), hidden_channels=8).double())
    x = torch.randn(3, *shape, dtype=torch.float64)
    cond = conditioning_part(shape, mask, swap)
    for out in (t(x), t.inv(x)):
        assert torch.equal(out[:, cond], x[:, cond])
        assert (out[:, ~cond] != x[:, ~cond]).all()


def test_odd_half_mask_conditions_on_a_prefix():
    t = perturb(AffineCoupling(5, mask="half", hidden_dims=(8,)).double())
    x = torch.randn(4, 5, dtype=torch.float64)
    unchanged = (t(x) == x).all(0)
    n = int(unchanged.sum())
    assert n in (2, 3) and unchanged[:n].all() and not unchanged[n:].any()


@pytest.mark.parametrize("cls", COUPLINGS)
@pytest.mark.parametrize("shape,mask,swap", MASK_CASES)
def test_zero_initialized_network_is_exactly_the_identity(cls, shape, mask, swap):
    t = cls(shape, mask=mask, swap=swap, hidden_dims=(16,), hidden_channels=8).double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    y = t(x)
    assert torch.equal(y, x)
    assert torch.equal(t.log_abs_det_jacobian(x, y), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(t.with_cache(0).inv(x), x)


@pytest.mark.parametrize("shape,mask", [((2,), "half"), ((2, 3, 3), "channel")])
def test_affine_log_scale_stays_within_the_bound_for_huge_weights(shape, mask):
    bound = 2.0
    t = AffineCoupling(shape, mask=mask, scale_bound=bound, hidden_dims=(8,), hidden_channels=4)
    t = t.double()
    with torch.no_grad():
        for p in t.parameters():
            p.fill_(1e3)
    x = 3 * torch.randn(64, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    y = t(x)
    assert torch.isfinite(y).all()
    # Each transformed element depends on its own input only through exp(s), so the gradient of
    # sum(y) at that element is exactly the scale.
    (grad,) = torch.autograd.grad(y.sum(), x)
    s = grad[:, ~conditioning_part(shape, mask, False)].log()
    assert (s.abs() <= bound).all()
    assert s.abs().max() > 0.99 * bound  # saturated, so the bound is what was tested
    ladj = t.log_abs_det_jacobian(x, y)
    assert torch.allclose(ladj, s.sum(1), atol=1e-9, rtol=0)


@pytest.mark.parametrize("cls", COUPLINGS)
def test_single_feature_is_a_learned_elementwise_map(cls):
    """Issue 11: one feature used to be refused ("a 'half' mask needs at least 2 features")."""
    t = perturb(cls(1, swap=True).double(), 0.5)
    x = torch.randn(5, 1, dtype=torch.float64)
    y = t(x)
    assert not torch.allclose(y, x)
    assert torch.allclose(t.inv(y.clone()), x, atol=1e-12)


@pytest.mark.parametrize("cls", COUPLINGS)
def test_single_channel_with_channel_mask_is_rejected_naming_the_shape(cls):
    with pytest.raises(ValueError, match=r"\(1, 4, 4\)"):
        cls((1, 4, 4), mask="channel")
    # A checkerboard splits the pixels instead, so one channel is fine.
    assert cls((1, 4, 4), mask="checkerboard")(torch.zeros(1, 4, 4)).shape == (1, 4, 4)


@pytest.mark.parametrize("cls", COUPLINGS)
@pytest.mark.parametrize("shape,mask", [
    ((4,), "checkerboard"), ((4,), "channel"), ((2, 4, 4), "half"), ((2, 4, 4), "parity"),
    ((4,), "diagonal"),
])
def test_mask_that_does_not_fit_the_shape_is_rejected(cls, shape, mask):
    with pytest.raises(ValueError) as err:
        cls(shape, mask=mask)
    assert repr(mask) in str(err.value) and str(shape) in str(err.value)


@pytest.mark.parametrize("cls", COUPLINGS)
@pytest.mark.parametrize("shape,bad", [((4,), (3, 5)), ((2, 4, 4), (3, 2, 4, 5)), ((2, 4, 4), (4, 4))])
def test_wrong_input_shape_is_rejected_naming_both_shapes(cls, shape, bad):
    t = cls(shape, hidden_dims=(8,), hidden_channels=4)
    for direction in (t, t.inv):
        with pytest.raises(ValueError) as err:
            direction(torch.zeros(bad))
        assert str(tuple(bad)) in str(err.value) and str(tuple(shape)) in str(err.value)


def make_conditional(cls, shape, context_dim=3):
    return perturb(cls(shape, context_dim=context_dim, hidden_dims=(16,), hidden_channels=8).double())


@pytest.mark.parametrize("cls", CONDITIONALS)
@pytest.mark.parametrize("shape", [VECTOR, IMAGE])
def test_different_contexts_give_different_outputs(cls, shape):
    t = make_conditional(cls, shape)
    x = torch.randn(2, *shape, dtype=torch.float64)
    c1, c2 = torch.randn(2, 3, dtype=torch.float64)
    y1, y2 = t.condition(c1)(x), t.condition(c2)(x)
    assert not torch.allclose(y1, y2)
    # The context only moves the transformed part; the conditioning part is still copied.
    cond = conditioning_part(shape, "half" if len(shape) == 1 else "channel", False)
    assert torch.equal(y1[:, cond], y2[:, cond])


@pytest.mark.parametrize("cls", CONDITIONALS)
@pytest.mark.parametrize("context_shape", [(4,), (5, 2), ()])
def test_context_with_wrong_last_dimension_is_rejected(cls, context_shape):
    t = cls(VECTOR, context_dim=3, hidden_dims=(8,))
    with pytest.raises(ValueError) as err:
        t.condition(torch.zeros(context_shape))
    assert "3" in str(err.value) and str(context_shape) in str(err.value)


def test_unconditioned_call_says_to_condition_first():
    t = ConditionalAffineCoupling(VECTOR, context_dim=3)
    with pytest.raises(ValueError, match="condition"):
        t.flow(torch.zeros(VECTOR))


@pytest.mark.parametrize("cls", CONDITIONALS)
@pytest.mark.parametrize("shape", [VECTOR, IMAGE])
def test_unbatched_context_is_shared_by_a_batch(cls, shape):
    t = make_conditional(cls, shape)
    x = torch.randn(5, *shape, dtype=torch.float64)
    c = torch.randn(3, dtype=torch.float64)
    tc = t.condition(c)
    y = tc(x)
    assert y.shape == x.shape and tc.log_abs_det_jacobian(x, y).shape == (5,)
    rows = torch.stack([t.condition(c)(x[i]) for i in range(5)])
    assert torch.allclose(y, rows, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cls", CONDITIONALS)
@pytest.mark.parametrize("shape", [VECTOR, IMAGE])
def test_batched_context_applies_to_an_unbatched_input(cls, shape):
    t = make_conditional(cls, shape)
    x = torch.randn(*shape, dtype=torch.float64)
    c = torch.randn(5, 3, dtype=torch.float64)
    tc = t.condition(c)
    y = tc(x)
    assert y.shape == (5, *shape) and tc.log_abs_det_jacobian(x, y).shape == (5,)
    rows = torch.stack([t.condition(c[i])(x) for i in range(5)])
    assert torch.allclose(y, rows, atol=1e-12, rtol=0)
    assert not torch.allclose(y[0], y[1])
    x_back = tc.inv(y.clone())
    assert torch.allclose(x_back, x.expand_as(x_back), atol=1e-10, rtol=0)
