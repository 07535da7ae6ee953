"""Flow guides train without non-finite losses wherever the Gaussian guides do, at SVI's
learning rates up to 0.05 (issue 11, item 1): the funnel, eight schools, a 40-group hierarchical
model, a logistic regression, and an amortized posterior on a small VAE."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from torch import nn

from pyro_flows.infer import AmortizedFlow, AutoFlow

FLOWS = ("nice", "realnvp", "glow")


# Each test seeds Pyro itself, per seed it sweeps.
pytestmark = pytest.mark.usefixtures("fresh_pyro")


def hierarchical_data(seed: int, groups: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    theta = 1.0 + torch.randn(groups, generator=g)
    return theta + torch.randn(groups, generator=g)


def hierarchical(y):
    # The issue's model: glow failed at step 1 on 3 of 3 seeds at lr 0.05.
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.Gamma(2.0, 2.0))
    with pyro.plate("groups", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0 / tau))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def funnel(_):
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    pyro.sample("x", dist.Normal(0.0, torch.exp(v / 2)).expand([9]).to_event(1))


SCHOOLS_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, SCHOOLS_SIGMA), obs=y)


def logistic_data(seed: int, n: int = 200, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g) * 2
    y = torch.bernoulli(torch.sigmoid(x @ w + 0.5), generator=g)
    return x, y


def logistic(data):
    x, y = data
    w = pyro.sample("w", dist.Normal(0.0, 5.0).expand([x.shape[1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    with pyro.plate("n", len(y)):
        pyro.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)


MODELS = {
    "hierarchical": (hierarchical, hierarchical_data),
    "funnel": (funnel, lambda seed: None),
    "eight_schools": (eight_schools, lambda seed: SCHOOLS_Y),
    "logistic": (logistic, logistic_data),
}


def first_failure(model, guide, data, lr: float, steps: int, seed: int) -> int | None:
    """The first step whose loss is not finite (or whose draw the model refuses), else None."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    for step in range(steps):
        try:
            loss = svi.step(data)
        except ValueError:  # a parameter of the model left its support: non-finite draws
            return step
        if not math.isfinite(loss):
            return step
    return None


@pytest.mark.parametrize("flow", FLOWS)
def test_hierarchical_issue_repro_lr_005(flow):
    # Fast form of the issue's repro (old code: glow at step 1, realnvp by step 8).
    torch.set_num_threads(1)
    y = hierarchical_data(0)
    assert first_failure(hierarchical, AutoFlow(hierarchical, flow), y, 0.05, 40, 0) is None


@pytest.mark.slow
@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("lr", [0.01, 0.05])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_autoflow_as_stable_as_gaussian_guides(name, lr, flow):
    # glow at lr 0.05 failed here (funnel seed 2, step 223; eight schools seed 1) while its guide
    # kept ActNorms and a free LU diagonal: extra per-layer scales that compound into the tails.
    model, make_data = MODELS[name]
    for seed in range(3):
        data = make_data(seed)
        gaussian = [first_failure(model, g(model), data, lr, 300, seed)
                    for g in (AutoNormal, AutoDiagonalNormal)]
        failed = first_failure(model, AutoFlow(model, flow), data, lr, 300, seed)
        assert failed is None or any(f is not None for f in gaussian), (
            f"AutoFlow({flow!r}) on {name}, lr {lr}, seed {seed}: non-finite at step "
            f"{failed}; AutoNormal/AutoDiagonalNormal: {gaussian}")


class Encoder(nn.Module):
    def __init__(self, x_dim: int, z_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, 64), nn.ReLU(), nn.Linear(64, 2 * z_dim))

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw) + 1e-4


def vae_failure(flow: str | None, lr: float, seed: int, steps: int = 200) -> int | None:
    torch.manual_seed(seed)
    x = torch.rand(128, 16).round()
    z_dim = 4
    decoder = nn.Sequential(nn.Linear(z_dim, 64), nn.ReLU(), nn.Linear(64, 16))
    encoder = Encoder(16, z_dim)
    q = AmortizedFlow(encoder, z_dim, flow=flow) if flow else None

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([z_dim]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            if q is None:
                pyro.module("encoder", encoder)
                pyro.sample("z", dist.Normal(*encoder(x)).to_event(1))
            else:
                pyro.module("q", q)
                pyro.sample("z", q(x))

    return first_failure(model, guide, x, lr, steps, seed)


@pytest.mark.slow
@pytest.mark.parametrize("lr", [0.01, 0.05])
def test_amortized_flow_as_stable_as_gaussian_encoder(lr):
    for seed in range(3):
        gaussian = vae_failure(None, lr, seed)
        for flow in FLOWS:
            failed = vae_failure(flow, lr, seed)
            assert failed is None or gaussian is not None, (
                f"AmortizedFlow({flow!r}), lr {lr}, seed {seed}: non-finite at step {failed}")


@pytest.mark.slow
def test_realnvp_guide_outlasts_the_funnel_at_lr_005():
    # realnvp's guide went non-finite at step 624 (seed 0) and 958 (seed 8) of 1,000 here while
    # its conditioners' hidden layers took full-size Adam steps: one outlier gradient moved all
    # 64 inputs of every hidden unit the same way.
    torch.set_num_threads(1)
    for seed in (0, 8):
        failed = first_failure(funnel, AutoFlow(funnel, "realnvp"), None, 0.05, 1000, seed)
        assert failed is None, f"seed {seed}: non-finite at step {failed}"


@pytest.mark.slow
def test_autoflow_fits_a_wide_correlated_gaussian_at_lr_005():
    # Before the hidden layers' 1/fan_in rate, seed 0 stalled at sds 3.8 / 6.1, correlation 0.71.
    torch.set_num_threads(1)
    cov = 900.0 * torch.tensor([[1.0, 0.95], [0.95, 1.0]])

    def wide():
        pyro.sample("z", dist.MultivariateNormal(torch.zeros(2), cov))

    pyro.set_rng_seed(0)
    guide = AutoFlow(wide)
    svi = SVI(wide, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(3000):
        svi.step()
    with torch.no_grad(), pyro.plate("draws", 20000, dim=-1):
        z = guide()["z"]
    assert ((z.std(0) - 30.0).abs() < 4.5).all(), z.std(0)  # within 15 %
    assert torch.corrcoef(z.T)[0, 1] > 0.9
