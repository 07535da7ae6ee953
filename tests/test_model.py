"""FlowModel and Preprocessing: shapes, temperature, devices and dtypes, exact bits/dim,
exact log-dets, variational dequantization, errors, state_dict round trips."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import AffineTransform, SigmoidTransform, Transform, constraints

from pyro_flows.model import FlowModel, Preprocessing
from pyro_flows.transforms import conditional_vector_flow

VECTOR, IMAGE = (6,), (1, 8, 8)
SMALL = {  # builder kwargs that keep every model tiny
    VECTOR: dict(num_layers=2, hidden_dims=(16, 16)),
    IMAGE: dict(levels=2, steps=1, hidden_channels=8),
}


def small_model(name: str, shape: tuple[int, ...], **kwargs) -> FlowModel:
    return FlowModel.build(name, shape, **SMALL[shape], **kwargs)


def digits_like(n: int, shape: tuple[int, ...], levels: int = 17) -> torch.Tensor:
    return torch.randint(0, levels, (n, *shape)).float()


class NormalCDF(Transform):
    """``Phi``: pushes N(0, 1) to U(0, 1) exactly, so a flow made of it has a flat density."""

    domain = constraints.real
    codomain = constraints.unit_interval
    bijective = True

    def _call(self, z):
        return 0.5 * (1 + torch.erf(z / math.sqrt(2)))

    def _inverse(self, v):
        return math.sqrt(2) * torch.erfinv(2 * v - 1)

    def log_abs_det_jacobian(self, z, v):
        return dist.Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z)


# -- shapes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [VECTOR, IMAGE], ids=["vector", "image"])
@pytest.mark.parametrize("name", ["nice", "realnvp", "glow"])
def test_shapes_discrete(name, shape):
    torch.manual_seed(0)
    model = small_model(name, shape, data_levels=17)
    data = digits_like(10, shape)
    assert model.event_shape == shape
    assert model.log_prob(data).shape == (10,)
    assert model.log_prob(data.reshape(2, 5, *shape)).shape == (2, 5)
    assert model(data).shape == (10,)
    assert model.bits_per_dim(data).shape == (10,)
    samples = model.sample(4)
    assert samples.shape == (4, *shape) and samples.dtype == torch.float32
    assert torch.equal(samples, samples.floor())
    assert samples.min() >= 0 and samples.max() <= 16
    assert model.sample((2, 3)).shape == (2, 3, *shape)
    assert model.rsample(3).shape == (3, *shape)


@pytest.mark.parametrize("name", ["nice", "realnvp", "glow"])
def test_shapes_continuous_and_distribution(name):
    torch.manual_seed(0)
    model = small_model(name, VECTOR)
    x = torch.randn(7, *VECTOR)
    assert model.log_prob(x).shape == (7,)
    # Without preprocessing the model's density is its distribution's.
    assert torch.allclose(model.log_prob(x), model.distribution.log_prob(x))
    assert model.sample(5).shape == (5, *VECTOR)


def test_build_squeeze_models_its_output_shape():
    model = FlowModel.build("squeeze", (1, 4, 4))
    assert model.event_shape == (4, 2, 2)
    assert model.base_loc.shape == (1, 4, 4)
    assert model.log_prob(torch.randn(3, 4, 2, 2)).shape == (3,)


# -- temperature -----------------------------------------------------------------------------
def test_temperature_scales_spread_of_identity_model():
    torch.manual_seed(0)
    # A new RealNVP is a permutation of coordinates, so samples are N(0, T^2).
    model = small_model("realnvp", VECTOR)
    stds = [model.sample(4000, temperature=t).std().item() for t in (1.0, 0.5)]
    assert stds[0] == pytest.approx(1.0, rel=0.05)
    assert stds[1] == pytest.approx(0.5, rel=0.05)
    frozen = model.sample(6, temperature=0.0)
    assert torch.equal(frozen, torch.zeros_like(frozen))


@pytest.mark.parametrize("name", ["glow", "nice"])
def test_temperature_zero_is_deterministic(name):
    torch.manual_seed(0)
    model = small_model(name, IMAGE, data_levels=17)
    model.log_prob(digits_like(16, IMAGE))  # data-dependent ActNorm init: not the identity
    a, b = model.sample(5, temperature=0.0), model.sample(5, temperature=0.0)
    assert torch.equal(a, b) and torch.equal(a, a[:1].expand_as(a))
    spread = [model.rsample(500, temperature=t).std(0).mean().item() for t in (1.0, 0.3)]
    assert spread[1] < spread[0]


# -- devices and dtypes ----------------------------------------------------------------------
def test_to_float64_moves_everything():
    torch.manual_seed(0)
    model = small_model("glow", IMAGE, data_levels=17, dequantization="variational")
    model.to(torch.float64)
    floats = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    assert {t.dtype for t in floats} == {torch.float64}
    assert model.base_loc.dtype == model.base_scale.dtype == torch.float64
    data = digits_like(4, IMAGE)
    assert model.log_prob(data.double()).dtype == torch.float64
    assert model.log_prob(data.long()).dtype == torch.float64  # integers are cast
    assert model.sample(2).dtype == model.rsample(2).dtype == torch.float64
    z = torch.randn(IMAGE, dtype=torch.float64)
    assert model.distribution.log_prob(z).dtype == torch.float64


def test_to_float64_after_sampling():
    model = small_model("glow", VECTOR)
    model.sample(2)
    model.to(torch.float64)
    assert model.sample(2).dtype == torch.float64


@pytest.mark.parametrize("shape", [VECTOR, IMAGE], ids=["vector", "image"])
@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_meta_device(shape, dequantization):
    model = small_model("glow", shape, data_levels=17, dequantization=dequantization).to("meta")
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    lp = model.log_prob(torch.zeros(3, *shape, device="meta"))
    assert lp.shape == (3,) and lp.device.type == "meta"
    s = model.sample(2)
    assert s.shape == (2, *shape) and s.device.type == "meta"
    assert model.rsample(2).device.type == "meta"


# -- exact bits/dim and log-dets -------------------------------------------------------------
@pytest.mark.parametrize("levels", [17, 256])
@pytest.mark.parametrize("dequantization", ["uniform", None])
@pytest.mark.parametrize("alpha", [None, 0.05])
def test_flat_density_gives_log2_levels_bits(levels, dequantization, alpha):
    torch.manual_seed(0)
    d = 5
    # Base -> U(0,1)^D, then (with a logit) the inverse of the logit preprocessing: the
    # density of the rescaled data v is exactly 1 on the unit cube, so P(x) = levels^-D.
    parts = [NormalCDF()]
    if alpha is not None:
        parts += [AffineTransform(alpha, 1 - 2 * alpha), SigmoidTransform().inv]
    pre = Preprocessing((d,), levels, dequantization=dequantization, logit_alpha=alpha)
    model = FlowModel(parts, (d,), pre).to(torch.float64)
    data = torch.randint(0, levels, (50, d)).double()
    if dequantization is None:  # data that already carry their noise
        data = data + torch.rand_like(data)
    bpd = model.bits_per_dim(data)
    assert torch.allclose(bpd, torch.full_like(bpd, math.log2(levels)), rtol=0, atol=1e-10)


@pytest.mark.parametrize("alpha", [None, 0.05, 0.3])
def test_preprocessing_logdet_matches_autograd(alpha):
    torch.manual_seed(0)
    levels, d = 17, 5
    pre = Preprocessing((d,), levels, dequantization=None, logit_alpha=alpha).double()
    data = torch.rand(d, dtype=torch.float64) * levels
    x, ladj = pre(data)
    jac = torch.autograd.functional.jacobian(lambda t: pre(t)[0], data)
    assert torch.allclose(jac, torch.diag(torch.diagonal(jac)))
    assert ladj.item() == pytest.approx(torch.linalg.slogdet(jac).logabsdet.item(), abs=1e-10)
    assert torch.allclose(pre.inverse(x, quantize=False), data, atol=1e-12)
    assert torch.equal(pre.inverse(x), data.floor())


def test_variational_log_q_is_logistic_normal_at_init():
    torch.manual_seed(0)
    levels, d = 17, 4
    # The dequantizer's couplings start as the identity: u = sigmoid(eps), eps ~ N(0, 1).
    pre = Preprocessing((d,), levels, dequantization="variational", logit_alpha=None).double()
    data = torch.randint(0, levels, (8, d)).double()
    v, ladj = pre(data)
    u = v * levels - data
    assert ((u > 0) & (u < 1)).all()
    log_normal = dist.Normal(0.0, 1.0).log_prob(torch.logit(u))
    log_q = (log_normal - torch.log(u) - torch.log1p(-u)).sum(-1)
    assert torch.allclose(ladj, -d * math.log(levels) - log_q, atol=1e-8)


# -- training and gradients ------------------------------------------------------------------
def test_variational_dequantization_trains():
    torch.manual_seed(0)
    model = FlowModel.build("realnvp", (8,), data_levels=17, dequantization="variational",
                            num_layers=2, hidden_dims=(32, 32),
                            dequantizer=dict(hidden_dims=(32, 32)))
    data = digits_like(128, (8,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model.bits_per_dim(data).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05
    grads = [p.grad for p in model.preprocessing.dequantizer.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("levels", [None, 17])
def test_rsample_gradient_reaches_transform_parameters(levels):
    torch.manual_seed(0)
    model = small_model("realnvp", VECTOR, data_levels=levels)
    (model.rsample(16) ** 2).sum().backward()
    grads = [p.grad for p in model.transforms.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


# -- errors ----------------------------------------------------------------------------------
@pytest.fixture
def model():
    torch.manual_seed(0)
    return small_model("realnvp", VECTOR, data_levels=17)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(3, 5), r"trailing shape is \(6,\).*\(3, 5\)"),
    (torch.full((2, 6), float("nan")), "NaN or infinite"),
    (torch.zeros(2, 6, dtype=torch.float64), "float64.*float32"),
    (torch.zeros(2, 6, dtype=torch.complex64), "real data"),
    (torch.full((2, 6), 17.0), r"integers in \[0, 16\]"),
    (torch.full((2, 6), 0.5), "must be integers.*non-integers such as 0.5"),
    (torch.zeros(2, 6, device="meta"), "device meta.*model is on cpu"),
])
def test_bad_input_errors(model, bad, match):
    with pytest.raises(ValueError, match=match):
        model.log_prob(bad)
    with pytest.raises(ValueError, match=match):
        model.bits_per_dim(bad)


def test_integer_input_is_cast(model):
    data = digits_like(4, VECTOR)
    torch.manual_seed(1)
    a = model.log_prob(data.to(torch.uint8))
    torch.manual_seed(1)
    assert torch.equal(a, model.log_prob(data))


def test_bad_arguments(model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.log_prob([[0.0] * 6])
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)
    with pytest.raises(ValueError, match="conditional"):
        FlowModel.build("conditional_realnvp", (4,))
    with pytest.raises(ValueError, match="needs discrete data"):
        FlowModel.build("realnvp", (4,), dequantization="variational")
    with pytest.raises(ValueError, match="levels"):
        Preprocessing((4,), levels=1)
    with pytest.raises(ValueError, match="logit_alpha"):
        Preprocessing((4,), levels=17, logit_alpha=0.5)
    with pytest.raises(ValueError, match="dequantization"):
        Preprocessing((4,), levels=17, dequantization="gaussian")
    with pytest.raises(TypeError, match="conditioned first"):
        FlowModel(conditional_vector_flow("realnvp", 6, context_dim=2), (6,))
    with pytest.raises(ValueError, match="preprocessing is for event shape"):
        FlowModel(model.transforms[0], (6,), Preprocessing((5,), levels=17))


# -- persistence -----------------------------------------------------------------------------
def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    kwargs = dict(data_levels=17, dequantization="variational")
    model = small_model("glow", IMAGE, **kwargs)
    data = digits_like(8, IMAGE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):  # the first call initializes ActNorm; the steps move every parameter
        opt.zero_grad()
        model.bits_per_dim(data).mean().backward()
        opt.step()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    clone = small_model("glow", IMAGE, **kwargs)
    clone.load_state_dict(torch.load(path, weights_only=True))
    outputs = []
    for m in (model, clone):
        torch.manual_seed(3)
        outputs.append((m.log_prob(data), m.sample(3, temperature=0.7)))
    (lp, s), (lp_clone, s_clone) = outputs
    assert torch.equal(lp, lp_clone)
    assert torch.equal(s, s_clone)


# -- importance-weighted bits/dim -----------------------------------------------------------
def _scaled_normal_model(levels: int, scale: float) -> FlowModel:
    """v = (x + u) / levels ~ Normal(0, scale), so P(x) = Phi((x+1)/(L s)) - Phi(x/(L s))."""
    return FlowModel(AffineTransform(0.0, scale), (1,),
                     Preprocessing((1,), levels, "uniform", logit_alpha=None))


def test_importance_bits_per_dim_converges_to_the_exact_discrete_probability():
    torch.manual_seed(0)
    levels, x = 3, torch.tensor([[0.0], [1.0], [2.0]])
    normal = torch.distributions.Normal(0.0, 1.0)
    scale = 0.3  # a density that varies across each cell, so the one-draw bound is loose
    p = normal.cdf((x + 1) / (levels * scale)) - normal.cdf(x / (levels * scale))
    exact = -p.log().squeeze(-1) / math.log(2)
    model = _scaled_normal_model(levels, scale)
    iw = model.importance_bits_per_dim(x, k=4000)
    torch.testing.assert_close(iw, exact, atol=0.03, rtol=0)  # Monte Carlo error ~0.01
    bound = model.bits_per_dim(x.repeat(4000, 1)).reshape(4000, 3).mean(0)
    assert (bound > exact + 0.025).all()  # Jensen: the one-draw bound is looser


def test_importance_bits_per_dim_needs_dequantized_discrete_data():
    model = FlowModel.build("realnvp", VECTOR, **SMALL[VECTOR])
    with pytest.raises(ValueError, match="discrete data"):
        model.importance_bits_per_dim(torch.randn(3, *VECTOR), k=4)
    with pytest.raises(ValueError, match="k must be"):
        small_model("realnvp", VECTOR, data_levels=17).importance_bits_per_dim(
            digits_like(3, VECTOR), k=0)


@pytest.mark.parametrize("wrap", ["inverse", "compose"])
def test_transforms_inside_an_inverse_or_a_composition_are_registered(wrap):
    """``t.inv`` of a transform module and a plain ``ComposeTransform`` of modules hold
    parameters too: the model trains, saves and moves them like any other part."""
    from torch.distributions import ComposeTransform

    from pyro_flows.transforms import InvertibleConv1x1
    conv = InvertibleConv1x1((4, 2, 2))
    part = conv.inv if wrap == "inverse" else ComposeTransform([conv, InvertibleConv1x1((4, 2, 2))])
    model = FlowModel([part], (4, 2, 2))
    names = {name for name, _ in model.named_parameters()}
    assert set(dict(conv.named_parameters())) <= {n.split(".", 2)[-1] for n in names}
    assert len(list(model.parameters())) == (1 if wrap == "inverse" else 2) * len(
        list(conv.parameters()))
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in conv.parameters())
