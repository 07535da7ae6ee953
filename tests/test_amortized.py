"""AmortizedFlow: starts as the encoder's Gaussian, trains in a tiny VAE under a subsampled plate,
takes over a trained Gaussian VAE without changing its ELBO, and names bad encoder outputs."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_flows.infer.amortized import AmortizedFlow

N, D, K, B = 64, 16, 2, 16  # data points, data dim, latent dim, subsample size
DATA = torch.bernoulli(torch.full((N, D), 0.3), generator=torch.Generator().manual_seed(0))


class Encoder(nn.Module):
    """x -> (loc, scale), or (loc, scale, h) with ``context`` features."""

    def __init__(self, latent_dim=K, context=0):
        super().__init__()
        self.hidden = nn.Linear(D, 32)
        self.out = nn.Linear(32, 2 * latent_dim)
        self.context = context

    def forward(self, x):
        h = torch.tanh(self.hidden(x))
        loc, raw = self.out(h).chunk(2, dim=-1)
        scale = nn.functional.softplus(raw) + 1e-3
        return (loc, scale, h[..., : self.context]) if self.context else (loc, scale)


pytestmark = pytest.mark.usefixtures("fresh_pyro")


def vae(posterior):
    """A model and a guide over DATA; ``posterior(x)`` is the guide's distribution of z."""
    decoder = nn.Sequential(nn.Linear(K, 32), nn.Tanh(), nn.Linear(32, D))

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", N, subsample_size=B) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(K), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x[idx])

    def guide(x):
        with pyro.plate("data", N, subsample_size=B) as idx:
            pyro.sample("z", posterior(x[idx]))

    return model, guide


def gaussian(encoder):
    def posterior(x):
        pyro.module("encoder", encoder)
        loc, scale = encoder(x)
        return dist.Normal(loc, scale).to_event(1)
    return posterior


def flow(q):
    def posterior(x):
        pyro.module("q", q)
        return q(x)
    return posterior


def elbo_loss(model, guide, seed=5):
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return Trace_ELBO(num_particles=8, vectorize_particles=True).loss(model, guide, DATA)


@pytest.mark.parametrize("kind,exact", [("nice", True), ("realnvp", True), ("glow", False)])
def test_starts_as_the_gaussian(kind, exact):
    encoder = Encoder()
    q = AmortizedFlow(encoder, K, flow=kind)
    x = DATA[:5]
    pyro.set_rng_seed(1)
    qz = q(x)
    z = qz.rsample((3,))
    pyro.set_rng_seed(1)
    loc, scale = encoder(x)
    normal = dist.Normal(loc, scale).to_event(1)
    z_normal = normal.rsample((3,))
    tol = 0.0 if exact else 1e-5
    assert torch.allclose(z, z_normal, rtol=0, atol=tol)
    assert torch.allclose(qz.log_prob(z), normal.log_prob(z_normal), rtol=0, atol=10 * tol)
    fresh = torch.randn(7, 5, K)  # not the flow's own draw: no cache involved
    assert torch.allclose(qz.log_prob(fresh), normal.log_prob(fresh), rtol=0, atol=1e-5)


def test_batch_and_event_shapes():
    q = AmortizedFlow(Encoder(), K)
    for shape in [(5,), (3, 4)]:
        qz = q(torch.rand(*shape, D))
        assert qz.batch_shape == shape and qz.event_shape == (K,)
        assert qz.rsample((2,)).shape == (2, *shape, K)
        assert qz.log_prob(qz.sample()).shape == shape


@pytest.mark.parametrize("elbo", [
    Trace_ELBO(),
    Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1),
], ids=["trace", "vectorized"])
def test_vae_trains_in_a_subsampled_plate(elbo):
    q = AmortizedFlow(Encoder(), K, hidden_dims=(16, 16))
    model, guide = vae(flow(q))
    start = {n: p.detach().clone() for n, p in q.flow.named_parameters()}
    before = elbo_loss(model, guide)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    losses = [svi.step(DATA) for _ in range(40)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert elbo_loss(model, guide) < before
    moved = [n for n, p in q.flow.named_parameters() if not torch.equal(p, start[n])]
    assert moved, "the flow did not train"


def test_encoder_context_features():
    q = AmortizedFlow(Encoder(context=8), K, context_dim=8, flow="glow", hidden_dims=(16, 16))
    model, guide = vae(flow(q))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    assert all(torch.isfinite(torch.tensor([svi.step(DATA) for _ in range(3)])))
    assert q(DATA[:4]).rsample().shape == (4, K)


def test_flow_takes_over_a_trained_gaussian_vae_without_changing_its_elbo():
    encoder = Encoder()
    model, gaussian_guide = vae(gaussian(encoder))
    optim = pyro.optim.Adam({"lr": 1e-2})
    svi = SVI(model, gaussian_guide, optim, Trace_ELBO())
    for _ in range(30):
        svi.step(DATA)
    at_switch = elbo_loss(model, gaussian_guide)

    q = AmortizedFlow(encoder, K)
    _, flow_guide = vae(flow(q))
    # Same seed, same draws: the flow starts as the identity, so the ELBO is the same number.
    assert elbo_loss(model, flow_guide) == at_switch

    start = {n: p.detach().clone() for n, p in q.flow.named_parameters()}
    svi = SVI(model, flow_guide, optim, Trace_ELBO())
    assert all(torch.isfinite(torch.tensor([svi.step(DATA) for _ in range(5)])))
    assert any(not torch.equal(p, start[n]) for n, p in q.flow.named_parameters())


def test_follows_the_encoder_and_moves_with_to():
    q = AmortizedFlow(Encoder().double(), K)
    floats = lambda m: [t for t in [*m.parameters(), *m.buffers()] if t.is_floating_point()]
    assert all(t.dtype == torch.float64 for t in floats(q))
    q.to(torch.float32)
    assert all(t.dtype == torch.float32 for t in floats(q))
    q.to(torch.float64)
    assert q(DATA[:3].double()).rsample().dtype == torch.float64
    q.to("meta")
    assert all(t.device.type == "meta" for t in [*q.parameters(), *q.buffers()])


class Fixed(nn.Module):
    """An encoder returning whatever it was given."""

    def __init__(self, *outputs):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.outputs = outputs

    def forward(self, x):
        return self.outputs


def test_bad_encoder_outputs_are_named():
    loc, scale = torch.zeros(4, K), torch.ones(4, K)
    x = DATA[:4]
    with pytest.raises(ValueError, match=r"shape \(4, 3\).*latent_dim=2"):
        AmortizedFlow(Fixed(torch.zeros(4, 3), torch.ones(4, 3)), K)(x)
    with pytest.raises(ValueError, match=r"scale has shape \(4, 1\)"):
        AmortizedFlow(Fixed(loc, torch.ones(4, 1)), K)(x)
    with pytest.raises(ValueError, match="pass context_dim"):
        AmortizedFlow(Fixed(loc, scale, torch.zeros(4, 5)), K)(x)
    with pytest.raises(ValueError, match=r"must return \(loc, scale, context\)"):
        AmortizedFlow(Fixed(loc, scale), K, context_dim=5)(x)
    with pytest.raises(ValueError, match=r"context has shape \(4, 6\).*context_dim=5"):
        AmortizedFlow(Fixed(loc, scale, torch.zeros(4, 6)), K, context_dim=5)(x)
    with pytest.raises(ValueError, match="does not broadcast"):
        AmortizedFlow(Fixed(loc, scale, torch.zeros(3, 5)), K, context_dim=5)(x)
    with pytest.raises(ValueError, match="NaN or infinite"):
        AmortizedFlow(Fixed(loc, scale, torch.full((4, 5), float("nan"))), K, context_dim=5)(x)
    with pytest.raises(ValueError, match="loc"):
        AmortizedFlow(Fixed(torch.full((4, K), float("nan")), scale), K)(x)
    with pytest.raises(ValueError, match="float64"):
        AmortizedFlow(Fixed(loc.double(), scale.double()), K)(x)  # the flow follows .scale
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        AmortizedFlow(Encoder(latent_dim=1), 0)


def test_minimal_swap_in_pyros_vae_example_trains_the_flow():
    # Pyro's examples/vae/vae.py registers only its encoder; swapping the guide's distribution
    # alone left the flow untrained (0 of 12 flow tensors changed, issue 11).
    encoder = Encoder()
    q = AmortizedFlow(encoder, K)

    def posterior(x):
        pyro.module("encoder", encoder)  # the example's line, unchanged
        return q(x)  # was: dist.Normal(*encoder(x)).to_event(1)

    model, guide = vae(posterior)
    before = {n: p.detach().clone() for n, p in q.flow.named_parameters()}
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(5):
        svi.step(DATA)
    changed = [n for n, p in q.flow.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before) > 0
    assert any(name.startswith("amortized_flow$$$") for name in pyro.get_param_store())


def test_flow_registered_both_ways_is_optimized_once():
    q = AmortizedFlow(Encoder(), K)
    model, guide = vae(flow(q))  # pyro.module("q", q) and the flow's own registration
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(DATA)
    store = pyro.get_param_store()
    names = [n for n in store.keys() if n.startswith("amortized_flow$$$")]
    assert names
    for name in names:
        assert store[name] is store["q$$$flow." + name.split("$$$", 1)[1]]


def test_one_dimensional_latent():
    q = AmortizedFlow(Encoder(latent_dim=1), 1)
    assert q(DATA[:3]).rsample().shape == (3, 1)


def test_a_second_flow_under_the_same_name_is_refused_with_the_fix():
    """Two AmortizedFlows under the default name in one process: the second would take the
    first one's tensors from the param store (as it must after a reload) and fail deep inside
    a matrix product. It is refused, naming the clash and the fix."""
    x = DATA[:4]
    AmortizedFlow(Encoder(), K, flow="realnvp")(x)
    other = AmortizedFlow(Encoder(), K, flow="nice", hidden_dims=(7,))
    with pytest.raises(ValueError, match="amortized_flow.*name=.*clear_param_store"):
        other(x)
    AmortizedFlow(Encoder(), K, flow="nice", hidden_dims=(7,), name="second")(x)  # the fix
