"""AutoFlow: starts as AutoNormal, trains with every ELBO, works with Predictive and NeuTra,
samples medians/quantiles, survives pickling and reloads, and rejects models it cannot guide."""

import copy
import io
import math
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import (
    MCMC,
    NUTS,
    SVI,
    Predictive,
    RenyiELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    config_enumerate,
)
from pyro.infer.autoguide import AutoNormal, init_to_mean
from pyro.infer.reparam import NeuTraReparam
from torch.distributions import biject_to

from pyro_flows.infer import AutoFlow, build_guide_flow
from pyro_flows.transforms import ActNorm, InvertibleLinear

DATA = torch.tensor([0.5, 1.0, 2.0])
SMALL = dict(num_layers=2, hidden_dims=(16, 16))
LATENT = "_AutoFlow_latent"


def model():
    # D = 4 unconstrained dims: a positive scale (log-transformed) and three locations.
    s = pyro.sample("s", dist.HalfNormal(1.0))
    with pyro.plate("p", 3):
        mu = pyro.sample("mu", dist.Normal(0.0, s))
        pyro.sample("x", dist.Normal(mu, 1.0), obs=DATA)


pytestmark = pytest.mark.usefixtures("fresh_pyro")


def flow_params(guide):
    return {n: p.detach().clone() for n, p in guide.flow.named_parameters()}


def draw(guide, seed=1):
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return guide.get_posterior().sample((4,))


@pytest.mark.parametrize("flow,layers", [("nice", 2), ("realnvp", 4), ("glow", 2)])
def test_starts_exactly_as_autonormal(flow, layers):
    # realnvp with 4 layers holds a fixed permutation and glow a random rotation: the guide must
    # still start at AutoNormal's N(loc, scale), draw for draw.
    guide = AutoFlow(model, flow, num_layers=layers, hidden_dims=(16, 16), init_loc_fn=init_to_mean)
    normal = AutoNormal(model, init_loc_fn=init_to_mean)
    guide(), normal()
    loc = torch.cat([normal.locs.s.reshape(1), normal.locs.mu]).detach()
    assert torch.allclose(guide.loc, loc)
    assert torch.allclose(guide.scale, torch.full((4,), 0.1))

    pyro.set_rng_seed(3)
    z = guide.get_posterior().rsample((5,))
    pyro.set_rng_seed(3)
    assert torch.allclose(z, loc + 0.1 * torch.randn(5, 4), atol=1e-6)

    with torch.no_grad():
        many = guide.get_posterior().sample((20000,))
    assert torch.allclose(many.mean(0), loc, atol=5e-3)
    assert torch.allclose(many.std(0), torch.full((4,), 0.1), atol=3e-3)

    # Same constrained point, same log-density (Jacobian of the HalfNormal's log included).
    trace = poutine.trace(normal).get_trace()
    u = torch.cat([biject_to(dist.HalfNormal(1.0).support).inv(trace.nodes["s"]["value"])[None],
                   trace.nodes["mu"]["value"]]).detach()
    mine = poutine.trace(poutine.condition(guide, data={LATENT: u})).get_trace()
    assert torch.allclose(mine.nodes["s"]["value"], trace.nodes["s"]["value"])
    assert torch.allclose(mine.log_prob_sum(), trace.log_prob_sum(), atol=1e-4)


@pytest.mark.parametrize("elbo", [
    Trace_ELBO(),
    TraceGraph_ELBO(),
    RenyiELBO(alpha=0.5, num_particles=2),
    Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
], ids=["trace", "tracegraph", "renyi", "vectorized"])
def test_trains_with_every_elbo(elbo):
    guide = AutoFlow(model, **SMALL)
    guide()
    before, loc = flow_params(guide), guide.loc.detach().clone()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    losses = [svi.step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(guide.loc, loc)
    after = flow_params(guide)
    assert any(not torch.equal(before[n], after[n]) for n in before), "the flow did not train"
    assert all(torch.isfinite(p).all() for p in after.values())


def test_enumerated_discrete_sites_are_left_to_the_model():
    @config_enumerate
    def mixture():
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 3.0).to_event(1))
        with pyro.plate("data", 3):
            k = pyro.sample("k", dist.Categorical(torch.ones(2) / 2))
            pyro.sample("x", dist.Normal(loc[k], 1.0), obs=DATA)

    guide = AutoFlow(mixture, **SMALL)
    svi = SVI(mixture, guide, pyro.optim.Adam({"lr": 1e-2}), TraceEnum_ELBO(max_plate_nesting=1))
    assert torch.isfinite(torch.tensor(svi.step()))
    assert "k" not in poutine.trace(guide).get_trace().nodes
    assert guide.latent_dim == 2


def test_predictive_shapes():
    guide = AutoFlow(model, **SMALL)
    samples = Predictive(model, guide=guide, num_samples=7)()
    assert samples["mu"].shape == (7, 3)
    assert samples["x"].shape == (7, 3)
    assert samples["s"].reshape(-1).shape == (7,) and (samples["s"] > 0).all()


def test_neutra_nuts_runs():
    guide = AutoFlow(model, **SMALL)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(5):
        svi.step()
    neutra = NeuTraReparam(guide)
    mcmc = MCMC(NUTS(poutine.reparam(model, config=lambda _: neutra)), num_samples=4,
                warmup_steps=4, disable_progbar=True)
    mcmc.run()
    latent = mcmc.get_samples()["s_shared_latent"]
    assert latent.shape == (4, 4)
    # Batch dims must sit left of the model's plate (dim -1).
    sites = neutra.transform_sample(latent.unsqueeze(-2))
    assert sites["mu"].shape == (4, 3)
    assert sites["s"].reshape(-1).shape == (4,) and (sites["s"] > 0).all()


def test_posterior_rsample_is_differentiable():
    guide = AutoFlow(model, **SMALL)
    guide()
    posterior = guide.get_posterior()
    assert isinstance(posterior, dist.TransformedDistribution)
    z = posterior.rsample((16,))
    (z * torch.arange(1.0, 5.0)).pow(2).sum().backward()
    assert guide.loc.grad.abs().min() > 0
    assert guide.scale_unconstrained.grad.abs().min() > 0
    grads = [p.grad for p in guide.flow.parameters()]
    # Couplings start with zero output layers: those get gradients at once.
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) >= 2


def test_median_and_quantiles_by_sampling():
    guide = AutoFlow(model, init_loc_fn=init_to_mean, **SMALL)
    guide()
    log_s = guide.loc[0].item()
    q = guide.quantiles([0.1, 0.5, 0.9], num_samples=4000)
    assert q["s"].shape == (3,) and q["mu"].shape == (3, 3)
    # At initialization s = exp(N(loc, 0.1)): a log-normal with known quantiles.
    z = torch.tensor([-1.2816, 0.0, 1.2816])
    assert torch.allclose(q["s"], torch.exp(log_s + 0.1 * z), rtol=0.02)
    assert (q["mu"][1:] > q["mu"][:-1]).all()
    median = guide.median(num_samples=4000)
    assert median["mu"].shape == (3,)
    assert torch.allclose(median["s"], torch.tensor(log_s).exp(), rtol=0.02)


def test_pickling_keeps_the_live_guide_and_round_trips():
    guide = AutoFlow(model, **SMALL)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(3):
        svi.step()

    def sample_and_loss(g):
        pyro.set_rng_seed(7)
        values = g()
        return values, Trace_ELBO().loss(model, g)

    values, loss = sample_and_loss(guide)
    torch.save(guide, io.BytesIO())
    assert guide.model is not None
    again, loss_again = sample_and_loss(guide)
    assert loss_again == loss
    assert all(torch.equal(values[k], again[k]) for k in values)

    copied = pickle.loads(pickle.dumps(guide))
    pyro.set_rng_seed(7)
    assert torch.equal(copied()["mu"], values["mu"])


def test_reload_through_param_store_and_state_dict():
    # Glow has random buffers (LU permutation and signs), which the param store does not hold.
    kwargs = dict(flow="glow", **SMALL)
    guide = AutoFlow(model, **kwargs)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(5):
        svi.step()
    expected = draw(guide)

    state = copy.deepcopy(pyro.get_param_store().get_state())
    pyro.clear_param_store()
    pyro.get_param_store().set_state(state)
    from_store = AutoFlow(model, **kwargs)
    from_store()
    assert torch.allclose(draw(from_store), expected, atol=1e-6)

    buffer = io.BytesIO()
    torch.save(guide.state_dict(), buffer)
    buffer.seek(0)
    pyro.clear_param_store()
    from_dict = AutoFlow(model, **kwargs)
    from_dict()
    assert not torch.allclose(draw(from_dict), expected, atol=1e-3)
    from_dict.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.allclose(draw(from_dict), expected, atol=1e-6)


def test_glow_guide_never_initializes_actnorm_from_its_draws():
    guide = AutoFlow(model, flow="glow", actnorm=True, **SMALL)  # kept only on request
    guide()
    actnorms = [m for m in guide.modules() if isinstance(m, ActNorm)]
    assert len(actnorms) == 2
    Trace_ELBO(num_particles=4).loss_and_grads(model, guide)
    with torch.no_grad():  # fresh points, far from the guide: no cache can answer these
        guide.get_posterior().log_prob(5.0 + 3.0 * torch.randn(64, 4))
    for m in actnorms:
        assert torch.equal(m.loc, torch.zeros_like(m.loc))
        assert torch.equal(m.log_scale, torch.zeros_like(m.log_scale))


def test_glow_guide_has_one_scale_per_coordinate_the_gaussians():
    # ActNorms and a free LU diagonal were extra scales per layer that compounded into tails
    # past float range at lr 0.05 (tests/test_stability.py).
    guide = AutoFlow(model, flow="glow", **SMALL)
    guide()
    assert not any(isinstance(m, ActNorm) for m in guide.modules())
    linears = [m for m in guide.modules() if isinstance(m, InvertibleLinear)]
    assert len(linears) == 2
    names = {n for n, _ in guide.named_parameters()}
    assert not any(n.endswith("log_diag") for n in names)
    optim = torch.optim.Adam(guide.parameters(), lr=0.05)
    for _ in range(5):
        optim.zero_grad()
        Trace_ELBO().differentiable_loss(model, guide).backward()
        optim.step()
    x = torch.randn(3, 4)
    for m in linears:
        y, ladj = m.call_and_ladj(x)
        assert torch.allclose(ladj, torch.zeros(3), atol=1e-6)
        assert abs(torch.linalg.slogdet(torch.func.jacrev(lambda v: m(v))(x[0]))[1]) < 1e-5


def test_to_float64_and_meta_move_everything():
    guide = AutoFlow(model, flow="glow", **SMALL)
    guide()
    guide.to(torch.float64)
    tensors = [*guide.parameters(), *guide.buffers()]
    assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point())
    assert guide.get_posterior().rsample().dtype == torch.float64
    guide.to("meta")
    assert all(t.device.type == "meta" for t in [*guide.parameters(), *guide.buffers()])


def test_discrete_latent_site_is_named():
    def coin():
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        pyro.sample("flip", dist.Bernoulli(p))
        pyro.sample("y", dist.Normal(p, 1.0), obs=torch.tensor(0.3))

    with pytest.raises(ValueError, match="discrete latent site 'flip'"):
        AutoFlow(coin)()


def test_model_without_latents_is_rejected():
    def observed_only():
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.3))

    with pytest.raises(ValueError, match="no latent sample sites"):
        AutoFlow(observed_only)()


def test_bad_arguments():
    with pytest.raises(KeyError, match="no transform named"):
        AutoFlow(model, flow="no_such_flow")
    with pytest.raises(ValueError, match="unconditional flow on vectors"):
        AutoFlow(model, flow="conditional_realnvp")
    with pytest.raises(ValueError, match="init_scale"):
        AutoFlow(model, init_scale=0.0)
    with pytest.raises(ValueError, match="data_init"):
        AutoFlow(model, data_init=True)  # refused at construction, not at the first call


def test_single_scalar_latent():
    def scalar():
        pyro.sample("a", dist.Normal(1.0, 2.0))

    guide = AutoFlow(scalar, **SMALL)
    svi = SVI(scalar, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(3):
        assert torch.isfinite(torch.tensor(svi.step()))
    assert guide()["a"].shape == ()


def test_pyro_argument_names_are_honoured():
    # AutoIAFNormal's and AutoNormal's names ended in "_Coupling.__init__() got an unexpected
    # keyword argument" at the first call (issue 11).
    calls = []

    def create_plates():
        calls.append(1)
        return pyro.plate("p", 3)

    guide = AutoFlow(model, num_transforms=3, hidden_dim=8, create_plates=create_plates)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    assert math.isfinite(svi.step())
    couplings = [p for p in guide.flow.parts if hasattr(p, "net")]
    assert len(couplings) == 3
    widths = {m.out_features for c in couplings for m in c.net.modules()
              if isinstance(m, torch.nn.Linear)}
    assert 8 in widths and 64 not in widths
    assert calls


@pytest.mark.parametrize("kwargs", [dict(foo=1), dict(hidden_size=4), dict(num_flows=2)])
def test_unknown_arguments_refused_at_construction(kwargs):
    with pytest.raises(TypeError, match="It accepts: .*num_transforms.*init_scale.*create_plates"):
        AutoFlow(model, **kwargs)


def test_unknown_argument_error_names_only_what_the_user_passed():
    # scale_bound is AutoFlow's own default for realnvp; the error must not blame the user for it.
    with pytest.raises(TypeError, match=r"does not take 'foo' for") as err:
        AutoFlow(model, foo=1)
    assert "'scale_bound'" not in str(err.value)


def test_a_stale_param_store_is_named_not_a_shape_error_later():
    # Before: "_FixedLinear expects inputs whose trailing shape is (5,), got ... (3,)" at the
    # first call, naming neither the store nor the fix.
    def five():
        pyro.sample("z", dist.Normal(torch.zeros(5), 1.0).to_event(1))

    AutoFlow(model, **SMALL)()
    with pytest.raises(ValueError, match=r"already holds 'AutoFlow.loc' with shape \(4,\), but "
                                         r"this guide needs \(5,\).*clear_param_store"):
        AutoFlow(five, **SMALL)()
    with pytest.raises(ValueError, match="already holds 'AutoFlow.flow"):
        AutoFlow(model, num_layers=2, hidden_dims=(8, 8))()
    AutoFlow(model, **SMALL)()  # same shapes: the store's tensors are taken, as after set_state


def _scale_bounds(guide) -> list[float]:
    guide()  # builds the flow
    return [p.scale_bound for p in guide.flow.parts if hasattr(p, "scale_bound")]


def test_default_depth_keeps_the_total_log_scale_bound():
    # Eight couplings close a ring-shaped posterior that four could not; at 3 each they went
    # non-finite on the funnel at lr 0.05, at 12 / 8 each they did not. Eight Glow layers went
    # non-finite on eight schools, four did not (RESULTS, seventh round).
    assert _scale_bounds(AutoFlow(model)) == [1.5] * 8
    pyro.clear_param_store()
    assert _scale_bounds(AutoFlow(model, num_layers=4)) == [3.0] * 4
    pyro.clear_param_store()
    assert _scale_bounds(AutoFlow(model, num_layers=2)) == [3.0] * 2
    pyro.clear_param_store()
    assert _scale_bounds(AutoFlow(model, "glow")) == [3.0] * 4
    pyro.clear_param_store()
    assert _scale_bounds(AutoFlow(model, "glow", num_layers=16)) == [0.75] * 16
    pyro.clear_param_store()
    assert _scale_bounds(AutoFlow(model, scale_bound=2.0)) == [2.0] * 8
    pyro.clear_param_store()
    nice = AutoFlow(model, "nice")
    nice()
    assert sum(hasattr(p, "net") for p in nice.flow.parts) == 8


def test_pyro_and_own_name_together_is_an_error():
    with pytest.raises(TypeError, match="both num_layers= and num_transforms="):
        AutoFlow(model, num_layers=2, num_transforms=2)
    with pytest.raises(TypeError, match="both hidden_dims= and hidden_dim="):
        AutoFlow(model, hidden_dims=(8,), hidden_dim=8)


def test_build_guide_flow_is_the_identity_and_leaves_the_rng_alone():
    x = torch.randn(6, 5)
    state = torch.get_rng_state()
    flows = [build_guide_flow(k, 5, num_layers=4) for k in ("nice", "realnvp", "glow")]
    assert torch.equal(torch.get_rng_state(), state)
    for f in flows:
        assert torch.allclose(f(x), x, atol=1e-6)
        assert torch.allclose(f.log_abs_det_jacobian(x, f(x)), torch.zeros(6), atol=1e-6)
    conditional = build_guide_flow("conditional_realnvp", 5, context_dim=3, num_layers=4)
    assert torch.equal(conditional.condition(torch.randn(6, 3))(x), x)
