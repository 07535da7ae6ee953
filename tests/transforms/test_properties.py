"""Properties over random sizes, batch shapes and masks: couplings invert exactly and their
inverse's log-det is the negated forward one; squeezing is a lossless rearrangement."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_flows.transforms import AdditiveCoupling, AffineCoupling, Squeeze

F64 = torch.float64
batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
seeds = st.integers(0, 2**31 - 1)


def random_coupling(cls, shape, mask, swap, seed):
    # Seed the initialization too, so that a failing example replays exactly.
    torch.manual_seed(seed)
    t = cls(shape, mask=mask, swap=swap, hidden_dims=(8,), hidden_channels=4).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=F64))
    return t, g


def check_round_trip_and_log_dets(t, x):
    y = t(x)
    # A cache-free copy, so that every value below is computed, never remembered.
    fresh = t.with_cache(0)
    x_back = fresh.inv(y.clone())
    assert x_back.shape == x.shape
    assert torch.allclose(x_back, x, atol=1e-10, rtol=0)
    ladj_forward = fresh.log_abs_det_jacobian(x, y)
    # The inverse pass computes its own log-det (inverse_and_ladj); the cached instance returns it.
    y_copy = y.detach().clone()
    x_inv = t.inv(y_copy)
    ladj_inverse = t.inv.log_abs_det_jacobian(y_copy, x_inv)
    assert ladj_inverse.shape == x.shape[: x.dim() - t.event_dim]
    assert torch.allclose(ladj_inverse, -ladj_forward, atol=1e-10, rtol=0)


@settings(max_examples=30, deadline=None)
@given(
    cls=st.sampled_from([AdditiveCoupling, AffineCoupling]),
    dim=st.integers(2, 9),
    batch=batch_shapes,
    mask=st.sampled_from(["half", "parity"]),
    swap=st.booleans(),
    seed=seeds,
)
def test_vector_coupling_round_trip(cls, dim, batch, mask, swap, seed):
    t, g = random_coupling(cls, (dim,), mask, swap, seed)
    x = 2 * torch.randn(*batch, dim, generator=g, dtype=F64)
    check_round_trip_and_log_dets(t, x)


@settings(max_examples=15, deadline=None)
@given(
    cls=st.sampled_from([AdditiveCoupling, AffineCoupling]),
    channels=st.integers(2, 4),
    height=st.integers(1, 4),
    width=st.integers(2, 4),
    batch=batch_shapes,
    mask=st.sampled_from(["channel", "checkerboard"]),
    swap=st.booleans(),
    seed=seeds,
)
def test_image_coupling_round_trip(cls, channels, height, width, batch, mask, swap, seed):
    t, g = random_coupling(cls, (channels, height, width), mask, swap, seed)
    x = 2 * torch.randn(*batch, channels, height, width, generator=g, dtype=F64)
    check_round_trip_and_log_dets(t, x)


@settings(max_examples=30, deadline=None)
@given(
    channels=st.integers(1, 3),
    half_height=st.integers(1, 4),
    half_width=st.integers(1, 4),
    batch=batch_shapes,
    seed=seeds,
)
def test_squeeze_round_trip(channels, half_height, half_width, batch, seed):
    shape = (channels, 2 * half_height, 2 * half_width)
    t = Squeeze(shape).with_cache(0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, *shape, generator=g, dtype=F64)
    y = t(x)
    assert y.shape == (*batch, 4 * channels, half_height, half_width)
    assert torch.equal(t.inv(y), x)
    assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)
    z = torch.randn(*batch, 4 * channels, half_height, half_width, generator=g, dtype=F64)
    assert torch.equal(t(t.inv(z)), z)
