"""IWAE bound checked against models whose marginal likelihood is known exactly."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal, init_to_value

from pyro_flows.infer.iwae import (
    importance_log_weights,
    importance_sample,
    iwae_log_likelihood,
)

DTYPE = torch.float64  # exact-guide checks compare to closed forms at 1e-9

# Conjugate Normal-Normal: z ~ N(MU0, S0), x_i | z ~ N(z, S).
MU0, S0, S = 0.5, 2.0, 1.0
X = torch.tensor([1.2, -0.3, 2.1, 0.8, 1.5], dtype=DTYPE)


def conjugate_model(x: torch.Tensor) -> None:
    z = pyro.sample("z", dist.Normal(torch.tensor(MU0, dtype=DTYPE), S0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, S), obs=x)


def posterior(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    precision = 1 / S0**2 + len(x) / S**2
    return (MU0 / S0**2 + x.sum() / S**2) / precision, precision**-0.5


def log_evidence(x: torch.Tensor) -> float:
    n = len(x)
    cov = S**2 * torch.eye(n, dtype=DTYPE) + S0**2
    return float(dist.MultivariateNormal(torch.full((n,), MU0, dtype=DTYPE), cov).log_prob(x))


def posterior_guide(shift: float = 0.0, scale_factor: float = 1.0):
    """Exact posterior moved by ``shift`` posterior sds and scaled."""

    def guide(x: torch.Tensor) -> None:
        mean, sd = posterior(x)
        pyro.sample("z", dist.Normal(mean + shift * sd, sd * scale_factor))

    return guide


# Local-latent ("VAE-like") model: z_n ~ N(0, 1), x_nj | z_n ~ N(W_j z_n, SX),
# so p(x_n) = N(0, SX^2 I + W W^T) and z_n | x_n is Normal.
W = torch.tensor([1.5, -0.5], dtype=DTYPE)
SX = 0.5
XL = torch.tensor([[0.3, -0.2], [2.0, -0.4], [-1.1, 0.5], [0.0, 0.9]], dtype=DTYPE)


def local_model(x: torch.Tensor) -> None:
    # data plate at dim -2 with a feature plate inside: checks that the
    # per-datapoint sums use the plate's own dim, not just the rightmost one.
    with pyro.plate("data", len(x), dim=-2):
        z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=DTYPE), 1.0))
        with pyro.plate("features", 2, dim=-1):
            pyro.sample("x", dist.Normal(z * W, SX), obs=x)


def local_model_with_deterministic(x: torch.Tensor) -> None:
    local_model(x)
    pyro.deterministic("data_size", torch.tensor(float(len(x))))  # outside the plate


def local_posterior_guide(x: torch.Tensor) -> None:
    precision = 1 + (W**2).sum() / SX**2
    mean = (x @ W / SX**2 / precision).unsqueeze(-1)
    with pyro.plate("data", len(x), dim=-2):
        pyro.sample("z", dist.Normal(mean, precision**-0.5))


def local_log_evidence(x: torch.Tensor) -> torch.Tensor:
    cov = SX**2 * torch.eye(2, dtype=DTYPE) + torch.outer(W, W)
    return dist.MultivariateNormal(torch.zeros(2, dtype=DTYPE), cov).log_prob(x)


@pytest.fixture(autouse=True)
def _seed() -> None:
    pyro.set_rng_seed(0)
    pyro.clear_param_store()


@pytest.mark.parametrize("num_samples", [1, 50])
@pytest.mark.parametrize("vectorize", [None, False])
def test_exact_posterior_guide_recovers_log_evidence(num_samples, vectorize):
    bound = iwae_log_likelihood(
        conjugate_model, posterior_guide(), X, num_samples=num_samples, vectorize=vectorize
    )
    assert bound.shape == ()
    assert float(bound) == pytest.approx(log_evidence(X), abs=1e-9)


def test_worse_guide_is_below_log_evidence_and_tightens_with_k():
    guide = posterior_guide(shift=3.0, scale_factor=0.7)
    means = []
    for k in (1, 10, 100):
        repeats = torch.stack(
            [iwae_log_likelihood(conjugate_model, guide, X, num_samples=k) for _ in range(50)]
        )
        means.append(float(repeats.mean()))
    exact = log_evidence(X)
    # Averages over 50 repeats: gaps are > 5 standard errors for this guide.
    assert means[0] < means[1] < means[2] < exact - 0.5
    assert means[0] < exact - 3.0


@pytest.mark.parametrize("guide_class", [AutoNormal, AutoMultivariateNormal])
def test_autoguides_at_the_exact_posterior_recover_log_evidence(guide_class):
    # Both families contain the exact posterior; AutoMultivariateNormal also
    # checks that its guide-only auxiliary site counts in the guide density.
    mean, sd = posterior(X)
    init = init_to_value(values={"z": mean})
    guide = guide_class(conjugate_model, init_loc_fn=init, init_scale=sd)
    bound = iwae_log_likelihood(conjugate_model, guide, X, num_samples=200, batch_size=64)
    assert float(bound) == pytest.approx(log_evidence(X), abs=1e-9)


def test_chunking_combines_like_one_logsumexp():
    guide = posterior_guide(shift=1.0, scale_factor=1.5)
    pyro.set_rng_seed(1)
    chunked = iwae_log_likelihood(conjugate_model, guide, X, num_samples=1000, batch_size=64)
    pyro.set_rng_seed(1)
    weights = importance_log_weights(conjugate_model, guide, X, num_samples=1000, batch_size=64)
    assert weights.shape == (1000,)
    expected = torch.logsumexp(weights, 0) - math.log(1000)
    assert float(chunked) == pytest.approx(float(expected), abs=1e-12)
    # Chunking changes the random draws, not the estimand.
    whole = iwae_log_likelihood(conjugate_model, guide, X, num_samples=5000)
    split = iwae_log_likelihood(conjugate_model, guide, X, num_samples=5000, batch_size=333)
    assert float(whole) == pytest.approx(float(split), abs=0.05)
    assert float(whole) == pytest.approx(log_evidence(X), abs=0.05)


def test_sequential_chunks_reproduce_unchunked_draws():
    guide = posterior_guide(shift=1.0, scale_factor=1.5)
    pyro.set_rng_seed(2)
    whole = iwae_log_likelihood(conjugate_model, guide, X, num_samples=30, vectorize=False)
    pyro.set_rng_seed(2)
    split = iwae_log_likelihood(
        conjugate_model, guide, X, num_samples=30, batch_size=7, vectorize=False
    )
    assert float(whole) == pytest.approx(float(split), abs=1e-12)


@pytest.mark.parametrize("model", [local_model, local_model_with_deterministic])
def test_per_datapoint_bounds_with_exact_guide(model):
    bounds = iwae_log_likelihood(
        model, local_posterior_guide, XL, num_samples=20, per_datapoint_plate="data"
    )
    assert bounds.shape == (len(XL),)
    torch.testing.assert_close(bounds, local_log_evidence(XL), atol=1e-9, rtol=0)
    joint = iwae_log_likelihood(model, local_posterior_guide, XL, num_samples=20)
    assert float(bounds.sum()) == pytest.approx(float(joint), abs=1e-9)
    weights = importance_log_weights(
        model, local_posterior_guide, XL, num_samples=20, per_datapoint_plate="data"
    )
    assert weights.shape == (20, len(XL))


def test_per_datapoint_bound_with_autonormal_is_tighter_than_joint():
    guide = AutoNormal(local_model)  # unfitted: a poor, too narrow guide
    bounds = iwae_log_likelihood(
        local_model, guide, XL, num_samples=500, per_datapoint_plate="data"
    )
    joint = iwae_log_likelihood(local_model, guide, XL, num_samples=500)
    exact = local_log_evidence(XL)
    assert bounds.shape == (len(XL),)
    assert torch.all(bounds < exact)
    # Each data point gets its own K draws, so the sum beats the joint bound.
    assert float(joint) < float(bounds.sum()) < float(exact.sum())


def test_per_datapoint_log_weights_sum_to_joint_log_weights():
    guide = AutoNormal(local_model)
    guide(XL)  # build the guide's parameters before fixing the seed
    pyro.set_rng_seed(3)
    per_point = importance_log_weights(
        local_model, guide, XL, num_samples=64, per_datapoint_plate="data", batch_size=10
    )
    pyro.set_rng_seed(3)
    joint = importance_log_weights(local_model, guide, XL, num_samples=64, batch_size=10)
    assert per_point.shape == (64, len(XL))
    torch.testing.assert_close(per_point.sum(-1), joint, atol=1e-9, rtol=0)


def test_non_vectorizable_model_falls_back_to_a_loop():
    def scalar_model(x):
        z = pyro.sample("z", dist.Normal(torch.tensor(MU0, dtype=DTYPE), S0))
        # .item() needs a single value: breaks under a particle plate
        loc = torch.tensor(z.item(), dtype=DTYPE)
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, S), obs=x)

    with pytest.warns(RuntimeWarning, match="falling back"):
        bound = iwae_log_likelihood(scalar_model, posterior_guide(), X, num_samples=10)
    assert float(bound) == pytest.approx(log_evidence(X), abs=1e-9)
    with pytest.raises(RuntimeError):
        iwae_log_likelihood(scalar_model, posterior_guide(), X, num_samples=10, vectorize=True)


def test_importance_sample_returns_aligned_draws():
    draws = importance_sample(conjugate_model, posterior_guide(), X, num_samples=400)
    assert draws.samples["z"].shape == (400,)
    assert draws.log_weights.shape == (400,)
    mean, sd = posterior(X)
    assert float(draws.samples["z"].mean()) == pytest.approx(float(mean), abs=4 * sd / 20)
    assert "x" not in draws.samples


def test_non_finite_log_weights_raise():
    def truncated_model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.factor("positive", torch.where(z > 0, 0.0, -math.inf))

    def guide():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"\d+ of 100 importance log-weights are non-finite"):
        iwae_log_likelihood(truncated_model, guide, num_samples=100)


def test_model_without_latents_raises():
    def observed_only(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match="'observed_only' has no latent sample sites"):
        iwae_log_likelihood(observed_only, lambda x: None, X)


def test_latent_missing_from_guide_raises():
    with pytest.raises(ValueError, match=r"\['z'\].*not sampled by the guide"):
        iwae_log_likelihood(conjugate_model, lambda x: None, X, num_samples=5)


def test_per_datapoint_mode_rejects_global_latents():
    with pytest.raises(ValueError, match="site 'z' is not inside that plate"):
        iwae_log_likelihood(
            conjugate_model, posterior_guide(), X, num_samples=5, per_datapoint_plate="data"
        )


@pytest.mark.parametrize("kwargs", [{"num_samples": 0}, {"num_samples": 5, "batch_size": 0}])
def test_invalid_sizes_raise(kwargs):
    with pytest.raises(ValueError, match="positive integer"):
        iwae_log_likelihood(conjugate_model, posterior_guide(), X, **kwargs)


def test_per_datapoint_log_weights_agree_batched_and_one_run_per_draw():
    guide = AutoNormal(local_model)
    guide(XL)
    pyro.set_rng_seed(5)
    batched = importance_log_weights(local_model_with_deterministic, guide, XL, num_samples=6,
                                     per_datapoint_plate="data", vectorize=True)
    pyro.set_rng_seed(5)
    looped = importance_log_weights(local_model_with_deterministic, guide, XL, num_samples=6,
                                    per_datapoint_plate="data", vectorize=False)
    assert batched.shape == looped.shape == (6, len(XL))
    # Same guide, same law: both are finite draws of the same per-point weights' distribution,
    # and their sums over the data match the joint weights computed each way.
    assert torch.isfinite(batched).all() and torch.isfinite(looped).all()
    pyro.set_rng_seed(5)
    joint = importance_log_weights(local_model, guide, XL, num_samples=6, vectorize=False)
    torch.testing.assert_close(looped.sum(-1), joint, atol=1e-9, rtol=0)
