"""Diagnostics checked on a conjugate model whose posterior is known exactly."""

from __future__ import annotations

import math
import statistics

import arviz
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import AutoNormal, init_to_value

from pyro_flows.diagnostics import compare_with_mcmc, psis_khat, tail_khat, to_inference_data

DTYPE = torch.float64

# theta_j ~ N(MU0, S0) for j < 3, x_ij | theta ~ N(theta_j, S): three
# independent conjugate problems, so the posterior is Normal in closed form.
MU0, S0, S = 0.5, 2.0, 1.0
X = torch.tensor(
    [[1.2, -0.3, 2.1], [0.8, 1.5, 0.1], [0.3, -1.0, 1.7], [1.1, 0.2, 2.5]], dtype=DTYPE
)
PRECISION = 1 / S0**2 + len(X) / S**2
POST_MEAN = (MU0 / S0**2 + X.sum(0) / S**2) / PRECISION
POST_SD = PRECISION**-0.5


def model(x: torch.Tensor) -> None:
    theta = pyro.sample("theta", dist.Normal(torch.full((3,), MU0, dtype=DTYPE), S0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(theta, S).to_event(1), obs=x)


def posterior_guide(scale_factor: float = 1.0):
    def guide(x: torch.Tensor) -> None:
        scale = torch.full((3,), POST_SD * scale_factor, dtype=DTYPE)
        pyro.sample("theta", dist.Normal(POST_MEAN, scale).to_event(1))

    return guide


def log_evidence() -> float:
    # Columns are independent; each is MVN with covariance S^2 I + S0^2 11^T.
    n = len(X)
    cov = S**2 * torch.eye(n, dtype=DTYPE) + S0**2
    mvn = dist.MultivariateNormal(torch.full((n,), MU0, dtype=DTYPE), cov)
    return float(mvn.log_prob(X.T).sum())


def local_model(x: torch.Tensor) -> None:
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=DTYPE), 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


@pytest.fixture(autouse=True)
def _seed() -> None:
    pyro.set_rng_seed(0)
    pyro.clear_param_store()


def test_to_inference_data_groups_dims_and_coords():
    idata = to_inference_data(model, posterior_guide(), X, num_samples=400)
    assert {"posterior", "sample_stats"} <= set(idata.groups())
    theta = idata.posterior["theta"]
    assert theta.dims == ("chain", "draw", "theta_dim_0")
    assert theta.shape == (1, 400, 3)
    np.testing.assert_array_equal(theta.coords["theta_dim_0"].values, [0, 1, 2])
    assert list(idata.posterior.data_vars) == ["theta"]  # observed x excluded
    assert idata.posterior.attrs["inference_method"] == "variational"
    # Draws come from the exact posterior.
    np.testing.assert_allclose(
        theta.mean(("chain", "draw")).values, POST_MEAN.numpy(), atol=4 * POST_SD / 20
    )
    log_weight = idata.sample_stats["log_weight"]
    assert log_weight.dims == ("chain", "draw") and log_weight.shape == (1, 400)
    # Exact guide: every weight is p(x).
    np.testing.assert_allclose(log_weight.values, log_evidence(), atol=1e-9)


def test_to_inference_data_names_plated_dims_after_the_plate():
    guide = AutoNormal(local_model)
    x = torch.tensor([0.1, -0.4, 1.3, 0.7, 2.0], dtype=DTYPE)
    idata = to_inference_data(local_model, guide, x, num_samples=30, batch_size=8)
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "data")
    assert z.shape == (1, 30, 5)
    np.testing.assert_array_equal(z.coords["data"].values, np.arange(5))


def test_psis_khat_small_for_exact_posterior_and_close_autonormal():
    assert psis_khat(model, posterior_guide(), X, num_samples=1000) < 0.5
    # A Pyro guide slightly narrower than the posterior: true k = 1 - 0.9^2.
    init = init_to_value(values={"theta": POST_MEAN})
    guide = AutoNormal(model, init_loc_fn=init, init_scale=0.9 * POST_SD)
    khat = psis_khat(model, guide, X, num_samples=1000)
    assert math.isfinite(khat) and khat < 0.5


def test_psis_khat_large_for_too_narrow_guide():
    # q has a tenth of the posterior sd: the weights p/q are heavy tailed
    # (true k = 1 - 0.1^2); the median of three runs tames estimator noise.
    khats = [psis_khat(model, posterior_guide(0.1), X, num_samples=1000) for _ in range(3)]
    assert statistics.median(khats) > 0.7


def test_compare_with_known_inference_data():
    w_vi = np.array([[[1.0, 0.0], [3.0, 0.0], [5.0, 3.0]]])
    vi = arviz.from_dict(posterior={"mu": np.array([[0.0, 2.0, 4.0]]), "w": w_vi})
    # Two chains of two draws, pooled (sd with ddof=1) in the expected rows below.
    mcmc = arviz.from_dict(
        posterior={
            "mu": np.array([[1.0, 5.0], [1.0, 5.0]]),
            "w": np.array([[[0.0, -2.0], [4.0, 2.0]], [[0.0, 2.0], [4.0, -2.0]]]),
            "extra": np.zeros((2, 2)),
        }
    )
    table = compare_with_mcmc(vi, mcmc)
    assert list(table.columns) == [
        "mean_vi", "sd_vi", "mean_mcmc", "sd_mcmc", "std_mean_error", "sd_ratio"
    ]
    assert list(table.index) == ["mu", "w[0]", "w[1]"]
    sd_mcmc = math.sqrt(16 / 3)  # w[0]: 0, 4, 0, 4 and w[1]: -2, 2, 2, -2
    sd_mu = 4 / math.sqrt(3)  # draws 1, 5, 1, 5
    expected = {
        "mu": [2.0, 2.0, 3.0, sd_mu, -1 / sd_mu, 2 / sd_mu],
        "w[0]": [3.0, 2.0, 2.0, sd_mcmc, 1 / sd_mcmc, 2 / sd_mcmc],
        "w[1]": [1.0, math.sqrt(3), 0.0, sd_mcmc, 1 / sd_mcmc, math.sqrt(3) / sd_mcmc],
    }
    for name, row in expected.items():
        np.testing.assert_allclose(table.loc[name].to_numpy(), row, rtol=1e-12)


def test_compare_with_nuts_run():
    x = X[:, 0]

    def scalar_model(x):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(MU0, dtype=DTYPE), S0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, S), obs=x)

    def scalar_guide(x):
        pyro.sample("mu", dist.Normal(POST_MEAN[0], POST_SD))

    mcmc = MCMC(NUTS(scalar_model), num_samples=200, warmup_steps=100, disable_progbar=True)
    mcmc.run(x)
    idata = to_inference_data(scalar_model, scalar_guide, x, num_samples=2000)
    table = compare_with_mcmc(idata, mcmc)
    assert list(table.index) == ["mu"]
    row = table.loc["mu"]
    assert row["mean_vi"] == pytest.approx(float(POST_MEAN[0]), abs=0.05)
    assert row["sd_vi"] == pytest.approx(POST_SD, rel=0.1)
    # Exact VI posterior vs 200 NUTS draws: agreement up to MCMC error.
    assert abs(row["std_mean_error"]) < 0.3
    assert 0.75 < row["sd_ratio"] < 1.33
    assert row["std_mean_error"] == pytest.approx(
        (row["mean_vi"] - row["mean_mcmc"]) / row["sd_mcmc"]
    )


def test_compare_errors():
    vi = arviz.from_dict(posterior={"mu": np.zeros((1, 4)), "w": np.zeros((1, 4, 2))})
    with pytest.raises(ValueError, match=r"\['w'\].*not in the MCMC"):
        compare_with_mcmc(vi, arviz.from_dict(posterior={"mu": np.zeros((1, 4))}))
    with pytest.raises(ValueError, match="per-draw shape"):
        compare_with_mcmc(
            vi, arviz.from_dict(posterior={"mu": np.zeros((1, 4)), "w": np.zeros((1, 4, 3))})
        )
    with pytest.raises(TypeError, match="MCMC or arviz.InferenceData"):
        compare_with_mcmc(vi, {"mu": np.zeros((1, 4))})


def _discrete_model():
    pyro.sample("switch", dist.Bernoulli(torch.tensor(0.3)))


def _discrete_guide():
    pyro.sample("switch", dist.Bernoulli(torch.tensor(0.5)))


@pytest.mark.parametrize("diagnostic", [to_inference_data, psis_khat])
def test_discrete_latent_raises(diagnostic):
    with pytest.raises(ValueError, match="'switch' is discrete"):
        diagnostic(_discrete_model, _discrete_guide, num_samples=20)


@pytest.mark.parametrize("diagnostic", [to_inference_data, psis_khat])
def test_no_latent_sites_raises(diagnostic):
    def observed_only(x):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1), obs=x)

    with pytest.raises(ValueError, match="no latent sample sites"):
        diagnostic(observed_only, lambda x: None, torch.zeros(3), num_samples=20)


@pytest.mark.parametrize("diagnostic", [to_inference_data, psis_khat])
def test_non_finite_log_weights_raise(diagnostic):
    def truncated():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.factor("positive", torch.where(z > 0, 0.0, -math.inf))

    def guide():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="non-finite"):
        diagnostic(truncated, guide, num_samples=100)


def test_tail_khat_is_pyros_psis_diagnostic_on_the_same_draws():
    from pyro.infer.importance import psis_diagnostic, vectorized_importance_weights

    guide = posterior_guide(0.5)
    pyro.set_rng_seed(4)
    log_weights = vectorized_importance_weights(model, guide, X, num_samples=1000,
                                                max_plate_nesting=7)[0]
    pyro.set_rng_seed(4)
    expected = psis_diagnostic(model, guide, X, num_particles=1000, max_plate_nesting=7)
    assert tail_khat(log_weights) == pytest.approx(float(expected), abs=1e-6)
