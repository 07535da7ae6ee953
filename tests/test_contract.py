"""The contract every registered transform keeps, checked in float64 after perturbing the
parameters (identity-initialized layers would pass trivially otherwise)."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
import pyro.distributions as dist

import pyro_flows
from pyro_flows.registry import entry
from pyro_flows.transforms import skip_data_init

from helpers import perturb

VECTOR, IMAGE = (5,), (2, 4, 4)
CONTEXT_DIM = 3
# Extra configurations that the defaults do not reach, by event rank.
VARIANTS = {
    ("affine_coupling", 1): [{"mask": "parity", "swap": True}],
    ("affine_coupling", 3): [{"mask": "checkerboard"}],
    ("additive_coupling", 1): [{"mask": "parity"}],
    ("additive_coupling", 3): [{"mask": "checkerboard", "swap": True}],
    ("invertible_linear", 1): [{"lu": False}],
    ("invertible_conv1x1", 3): [{"lu": False}],
    ("realnvp", 3): [{"levels": 1, "steps": 4, "hidden_channels": 8}],
}
SMALL = {  # keep the image flows small so the Jacobians stay cheap
    "glow": {"steps": 2, "hidden_channels": 8},
    "realnvp": {"steps": 2, "hidden_channels": 8},
    "nice": {"steps": 2, "hidden_channels": 8},
    "glow_step": {"hidden_channels": 8},
}


def _cases():
    for name in pyro_flows.available():
        for rank in entry(name).event_dims:
            shape = VECTOR if rank == 1 else IMAGE
            small = SMALL.get(name.removeprefix("conditional_"), {}) if rank == 3 else {}
            yield pytest.param((name, shape, small), id=f"{name}-{rank}d")
            for extra in VARIANTS.get((name, rank), []):
                label = "-".join(map(str, extra.values()))
                yield pytest.param((name, shape, {**small, **extra}), id=f"{name}-{rank}d-{label}")


CASES = list(_cases())


class Case:
    """A built, perturbed, float64 transform; ``t`` is the transform to call (conditioned for
    conditional ones), ``module`` the nn.Module that owns the parameters."""

    def __init__(self, name, shape, kwargs, seed=0):
        torch.manual_seed(seed)
        self.name, self.shape, self.kwargs = name, shape, kwargs
        self.conditional = entry(name).conditional
        self.module = self.make()
        self.context = torch.randn(CONTEXT_DIM, dtype=torch.float64) if self.conditional else None
        self.t = self.transform(self.module)

    def make(self):
        kwargs = dict(self.kwargs)
        if self.conditional:
            kwargs["context_dim"] = CONTEXT_DIM
        module = pyro_flows.build(self.name, self.shape, **kwargs).double()
        return perturb(skip_data_init(module), scale=0.2, seed=1)

    def transform(self, module, context=None):
        if not self.conditional:
            return module
        return module.condition(self.context if context is None else context)

    @property
    def out_shape(self):
        return tuple(self.t.forward_shape(self.shape))

    def x(self, *batch):
        return torch.randn(*batch, *self.shape, dtype=torch.float64)


@pytest.fixture(params=CASES)
def case(request):
    return Case(*request.param)


def test_round_trip(case):
    x = case.x(3)
    y = case.t(x)
    assert torch.allclose(case.t.inv(y.clone()), x, atol=1e-8, rtol=0)
    y2 = case.t.with_cache(0)(x.clone())
    assert torch.allclose(y2, y, atol=1e-10, rtol=0)


def test_log_det_matches_autograd_jacobian(case):
    x = case.x()
    n = x.numel()

    def f(v):
        return case.t(v.reshape(case.shape)).reshape(-1)

    jac = torch.autograd.functional.jacobian(f, x.reshape(-1))
    assert jac.shape == (n, n)
    expected = torch.linalg.slogdet(jac)[1]
    y = case.t(x)
    assert torch.allclose(case.t.log_abs_det_jacobian(x, y), expected, atol=1e-6, rtol=0)
    # The log-det remembered from an inverse pass is the forward's, at the matching point.
    y = y.detach().clone()
    x2 = case.t.inv(y)
    assert torch.allclose(case.t.log_abs_det_jacobian(x2, y), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch", [(), (3,), (3, 4)])
def test_batch_shapes(case, batch):
    x = case.x(*batch)
    t = case.t if not case.conditional else case.transform(
        case.module, torch.randn(*batch, CONTEXT_DIM, dtype=torch.float64))
    y = t(x)
    assert y.shape == batch + case.out_shape
    assert t.log_abs_det_jacobian(x, y).shape == batch
    assert t.inv(y.clone()).shape == batch + case.shape


def test_transformed_distribution_shapes(case):
    base = dist.Normal(torch.zeros(case.shape, dtype=torch.float64), 1.0).to_event(len(case.shape))
    d = dist.TransformedDistribution(base, [case.t])
    s = d.sample((2,))
    assert s.shape == (2,) + case.out_shape
    lp = d.log_prob(torch.randn((7,) + case.out_shape, dtype=torch.float64))
    assert lp.shape == (7,) and torch.isfinite(lp).all()


def test_gradients_reach_every_parameter(case):
    if not list(case.module.parameters()):
        pytest.skip(f"{case.name} has no parameters")
    base = dist.Normal(torch.zeros(case.shape, dtype=torch.float64), 1.0).to_event(len(case.shape))
    d = dist.TransformedDistribution(base, [case.t])
    loss = -d.log_prob(torch.randn((6,) + case.out_shape, dtype=torch.float64)).sum()
    loss = loss + d.rsample((6,)).square().sum()
    loss.backward()
    for name, p in case.module.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"zero gradient at {name}"


def test_train_and_eval_agree(case):
    x = case.x(4)
    case.module.train()
    y_train = case.t(x)
    case.module.eval()
    assert torch.equal(case.t(x.clone()), y_train)


def test_no_stale_cache_after_an_optimizer_step(case):
    """Pyro issue 2564: the same input after a parameter update must give a new output."""
    x = case.x(4)
    y_before = case.t(x)
    with torch.no_grad():
        for p in case.module.parameters():
            p.add_(0.05)
    y_after = case.t(x)
    fresh = case.t.with_cache(0)(x.clone())
    assert torch.equal(y_after, fresh)
    if any(True for _ in case.module.parameters()):
        assert not torch.equal(y_after, y_before)


def _fused_adam_step(module):
    """An optimizer step that changes every parameter without bumping its version counter, as
    torch's fused Adam does."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.05, fused=True)
    for p in params:
        p.grad = torch.ones_like(p)
    versions = [p._version for p in params]
    opt.step()
    assert [p._version for p in params] == versions  # the case this test is about


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_no_stale_cache_after_a_fused_optimizer_step(case, grad):
    """Every kind of reuse the cache allows must notice an update that version counters miss:
    the same input again in either direction, and the inverse of a flow's own output."""
    if not any(True for _ in case.module.parameters()):
        pytest.skip("no parameters")
    x = case.x(4)
    with torch.set_grad_enabled(grad):
        y = case.t(x)
        x_back = case.t.inv(y.detach())
        _fused_adam_step(case.module)
        fresh = case.t.with_cache(0)
        y_again, x_again = case.t(x), case.t.inv(y.detach())
        assert torch.equal(y_again, fresh(x.clone()))
        assert torch.equal(x_again, fresh.inv(y.detach().clone()))
        assert not torch.equal(y_again, y) and not torch.equal(x_again, x_back)
        own = case.t(x)
        assert case.t.inv(own) is x  # a legitimate cache hit: the output was just computed
        _fused_adam_step(case.module)
        x_stale = case.t.inv(own)
        assert torch.equal(x_stale, case.t.with_cache(0).inv(own.detach().clone()))


def _outputs(case, module):
    x = torch.randn((3,) + case.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    t = case.transform(module)
    y = t(x)
    return y, t.log_abs_det_jacobian(x, y), t.inv(y.clone() + 0.1)


def _assert_same(a, b):
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_state_dict_reload(case):
    fresh = Case(case.name, case.shape, case.kwargs, seed=123).module
    fresh.load_state_dict(case.module.state_dict())
    _assert_same(_outputs(case, case.module), _outputs(case, fresh))


def test_torch_save_and_pickle(case):
    x = case.x(2)
    y = case.t(x)  # the cache now holds tensors with an autograd graph
    expected = _outputs(case, case.module)
    buf = io.BytesIO()
    torch.save(case.module, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    _assert_same(expected, _outputs(case, loaded))
    _assert_same(expected, _outputs(case, pickle.loads(pickle.dumps(case.module))))
    # Saving did not disturb the live module or its cache.
    assert torch.equal(case.t(x), y)
    _assert_same(expected, _outputs(case, case.module))


def test_device_follows_the_module_to_meta(case):
    module = case.module.to("meta")
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        assert tensor.device.type == "meta", f"{name} stayed on {tensor.device}"
    context = torch.empty(2, CONTEXT_DIM, device="meta", dtype=torch.float64)
    t = case.transform(module, context) if case.conditional else module
    base = dist.Normal(torch.zeros(case.shape, device="meta", dtype=torch.float64), 1.0,
                       validate_args=False).to_event(len(case.shape))
    d = dist.TransformedDistribution(base, [t], validate_args=False)
    lp = d.log_prob(torch.empty((2,) + case.out_shape, device="meta", dtype=torch.float64))
    assert lp.shape == (2,) and lp.device.type == "meta"
    s = d.sample((2,))
    assert s.shape == (2,) + case.out_shape and s.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_follows_the_module_to_cuda(case):
    module = case.module.to("cuda")
    context = case.context.cuda() if case.conditional else None
    t = case.transform(module, context)
    x = case.x(3).cuda()
    assert torch.allclose(t.inv(t(x).clone()), x, atol=1e-8)
