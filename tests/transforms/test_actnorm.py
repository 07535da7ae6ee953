"""Behaviour of ActNorm's data-dependent initialization: when it happens, what it produces, and
when it must not happen (sampling, a second batch, a reloaded or guide layer)."""

from __future__ import annotations

import io

import pyro.distributions as dist
import pytest
import torch

from pyro_flows.transforms import ActNorm, GlowStep, skip_data_init, vector_flow

F64 = torch.float64


def vector_data(n: int = 500, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([5.0, -2.0, 0.0], dtype=F64) + torch.tensor(
        [3.0, 0.1, 1.0], dtype=F64) * torch.randn(n, 3, generator=g, dtype=F64)


def image_data(n: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    loc = torch.tensor([1.0, -4.0], dtype=F64)[:, None, None]
    scale = torch.tensor([0.5, 7.0], dtype=F64)[:, None, None]
    return loc + scale * torch.randn(n, 2, 3, 5, generator=g, dtype=F64)


def per_channel(z: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (N * H * W, C)``: every pixel of every image is one observation."""
    return z.transpose(0, 1).reshape(z.shape[1], -1).T


def assert_standardized(flat: torch.Tensor) -> None:
    assert torch.allclose(flat.mean(0), torch.zeros(flat.shape[1], dtype=F64), atol=1e-10, rtol=0)
    var = flat.var(0, unbiased=False)
    assert torch.allclose(var, torch.ones_like(var), atol=1e-10, rtol=0)


def test_first_inverse_standardizes_each_feature():
    t = ActNorm(3).double()
    z = t.inv(vector_data())
    assert bool(t.initialized)
    assert_standardized(z)


def test_first_inverse_standardizes_each_channel_of_an_image():
    t = ActNorm((2, 3, 5)).double()
    x = image_data()
    z = t.inv(x)
    assert t.loc.shape == (2, 1, 1)
    assert_standardized(per_channel(z))
    # The log-det counts every pixel: -(H * W) * sum(log std) per image.
    std = per_channel(x).std(0, unbiased=False)
    expected = (15 * std.log().sum()).expand(40)
    assert torch.allclose(t.log_abs_det_jacobian(z, x), expected, atol=1e-10, rtol=0)


def test_log_prob_initializes_on_the_data_it_scores():
    t = ActNorm(3).double()
    x = vector_data()
    base = dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1)
    lp = dist.TransformedDistribution(base, [t]).log_prob(x)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    expected = dist.Normal(mean, std).log_prob(x).sum(-1)
    assert torch.allclose(lp, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("shape,constant", [((3,), (slice(None), 1)),
                                            ((2, 3, 5), (slice(None), 0))])
def test_zero_variance_feature_stays_finite(shape, constant):
    x = (vector_data() if len(shape) == 1 else image_data()).clone()
    x[constant] = 7.0
    t = ActNorm(shape).double()
    z = t.inv(x)
    assert torch.isfinite(z).all() and torch.isfinite(t.log_scale).all()
    assert torch.equal(z[constant], torch.zeros_like(z[constant]))
    assert torch.isfinite(t.log_abs_det_jacobian(z, x)).all()
    assert torch.allclose(t.with_cache(0)(z), x, atol=1e-12, rtol=0)


def test_second_batch_does_not_reinitialize():
    t = ActNorm(3).double()
    t.inv(vector_data(seed=0))
    loc, log_scale = t.loc.detach().clone(), t.log_scale.detach().clone()
    x2 = 10 + vector_data(seed=1)
    z2 = t.inv(x2)
    assert torch.equal(t.loc, loc) and torch.equal(t.log_scale, log_scale)
    assert torch.allclose(z2, (x2 - loc) * torch.exp(-log_scale), atol=1e-12, rtol=0)
    assert (z2.mean(0) - 10 * torch.exp(-log_scale)).abs().max() < 0.5


def test_sampling_never_initializes():
    t = ActNorm(3).double()
    eps = torch.randn(100, 3, dtype=F64)
    assert torch.equal(t(eps), eps)
    base = dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1)
    dist.TransformedDistribution(base, [t]).sample((50,))
    assert not bool(t.initialized)
    assert torch.equal(t.loc, torch.zeros(3, dtype=F64))
    # ... and data seen afterwards still initializes it.
    assert_standardized(t.inv(vector_data()))


def test_without_data_init_the_layer_is_the_identity():
    t = ActNorm(3, data_init=False).double()
    x = vector_data()
    assert bool(t.initialized)
    z = t.inv(x)
    assert torch.equal(z, x)
    assert torch.equal(t.log_abs_det_jacobian(z, x), torch.zeros(500, dtype=F64))
    assert torch.equal(t.with_cache(0)(x), x)


def test_reloaded_state_dict_marks_a_fresh_layer_initialized():
    trained = ActNorm(3).double()
    trained.inv(vector_data(seed=0))
    fresh = ActNorm(3).double()
    assert not bool(fresh.initialized)
    fresh.load_state_dict(trained.state_dict())
    x = vector_data(seed=1) * 4
    assert torch.equal(fresh.inv(x), trained.inv(x.clone()))
    assert torch.equal(fresh.loc, trained.loc)


def test_reloaded_checkpoint_of_a_whole_flow_marks_every_actnorm_initialized():
    trained = vector_flow("glow", 3, num_layers=2, hidden_dims=(8,)).double()
    base = dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1)
    dist.TransformedDistribution(base, trained).log_prob(vector_data(seed=0))
    buf = io.BytesIO()
    torch.save(trained.state_dict(), buf)
    buf.seek(0)
    fresh = vector_flow("glow", 3, num_layers=2, hidden_dims=(8,)).double()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = vector_data(seed=1) * 4
    lp_trained = dist.TransformedDistribution(base, trained).log_prob(x)
    lp_fresh = dist.TransformedDistribution(base, fresh).log_prob(x.clone())
    assert torch.equal(lp_fresh, lp_trained)


def test_skip_data_init_keeps_every_actnorm_the_identity():
    step = GlowStep((4, 2, 2), hidden_channels=4).double()
    assert skip_data_init(step) is step
    norms = [m for m in step.modules() if isinstance(m, ActNorm)]
    assert norms and all(bool(m.initialized) for m in norms)
    step.inv(5 + 3 * torch.randn(8, 4, 2, 2, dtype=F64))
    for m in norms:
        assert torch.equal(m.loc, torch.zeros_like(m.loc))
        assert torch.equal(m.log_scale, torch.zeros_like(m.log_scale))


def test_explicit_initialize_sets_the_statistics_and_prevents_later_init():
    t = ActNorm((2, 3, 5)).double()
    x = image_data(seed=0)
    t.initialize(x)
    assert bool(t.initialized)
    assert_standardized(per_channel(t.inv(x)))
    loc = t.loc.detach().clone()
    t.inv(image_data(seed=1) - 100)
    assert torch.equal(t.loc, loc)


def test_initialize_rejects_data_of_the_wrong_shape():
    t = ActNorm(3)
    with pytest.raises(ValueError, match=r"\(3,\).*\(10, 4\)"):
        t.initialize(torch.randn(10, 4))
    assert not bool(t.initialized)


def test_initialization_is_accurate_for_float32_data_far_from_zero():
    # float32 on purpose: it is the dtype data arrives in, and where the cancellation bites.
    g = torch.Generator().manual_seed(0)
    x = 1000 + torch.randn(1000, 2, generator=g)
    z = ActNorm(2).inv(x)
    assert (z.std(0, unbiased=False) - 1).abs().max() < 1e-3


def test_checkpoint_loaded_with_assign_is_used_on_the_next_call():
    t = ActNorm(3, data_init=False).double()
    x = torch.randn(4, 3, dtype=F64)
    t(x)
    checkpoint = {"loc": torch.ones(3, dtype=F64), "log_scale": torch.zeros(3, dtype=F64),
                  "initialized": torch.tensor(True)}
    t.load_state_dict(checkpoint, assign=True)
    assert torch.equal(t(x), x + 1)


def test_first_log_prob_runs_the_flow_once():
    """ActNorm's initialization changes parameters during the first inverse; the log-det
    remembered from that pass must still serve log_abs_det_jacobian (no second pass)."""
    import pyro_flows

    g = pyro_flows.build("glow", event_shape=(1, 8, 8), levels=2, steps=2, hidden_channels=8)
    calls = []
    forward = g._forward
    g._forward = lambda *a: (calls.append(1), forward(*a))[1]
    d = dist.TransformedDistribution(dist.Normal(torch.zeros(1, 8, 8), 1.0).to_event(3), [g])
    d.log_prob(torch.rand(16, 1, 8, 8))
    assert calls == []
