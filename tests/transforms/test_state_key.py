"""The parameter key of the transforms' caches (``Bijector._state_key``) keeps its walk of the
module tree between calls: every way of changing the tree or its parameters must still show.

Each test fills a cache, changes the transform and checks the next call against a direct
computation that uses no cache. The change always alters the result, so a stale key (and the
stale record or matrix it would let through) fails the test.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import pyro.distributions as dist
import pyro_flows
from pyro_flows.transforms import InvertibleLinear, realnvp
from pyro_flows.transforms.base import Bijector
from pyro_flows.transforms.coupling import ConditionalAffineCoupling

from helpers import perturb

F64 = torch.float64


class ParamSum(Bijector):
    """``y = x + (sum of every parameter in the tree)``, log-det 0: any parameter added, removed
    or swapped anywhere below changes the output. ``inner`` is a plain ``nn.Sequential``, so
    changes there go through no code of pyro-flows."""

    def __init__(self) -> None:
        super().__init__(event_dim=1)
        self.a = nn.Parameter(torch.tensor([1.0]))
        self.inner = nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1))

    def shift(self) -> torch.Tensor:
        return sum(p.sum() for p in self.parameters())

    def _forward(self, x, context=None):
        return x + self.shift(), x.new_zeros(x.shape[:-1])

    def _backward(self, y, context=None):
        return y - self.shift(), y.new_zeros(y.shape[:-1])


class Halve(nn.Module):
    """A parametrization storing ``2 w`` for ``w``, so registering it changes the parameters."""

    def forward(self, x):
        return x / 2

    def right_inverse(self, x):
        return 2 * x


def linear(value: float) -> nn.Linear:
    layer = nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(value)
        layer.bias.fill_(value)
    return layer


MUTATIONS = {
    "setattr_parameter": lambda t: setattr(t, "a", nn.Parameter(torch.tensor([5.0]))),
    "new_parameter": lambda t: setattr(t, "b", nn.Parameter(torch.tensor([3.0]))),
    "register_parameter_in_plain_module": lambda t: t.inner[0].register_parameter(
        "extra", nn.Parameter(torch.tensor([3.0]))),
    "parameter_set_to_none": lambda t: setattr(t, "a", None),
    "del_parameter": lambda t: delattr(t, "a"),
    "del_parameter_in_plain_module": lambda t: delattr(t.inner[1], "bias"),
    "replace_submodule": lambda t: setattr(t, "inner", nn.Sequential(linear(4.0))),
    "new_submodule": lambda t: setattr(t, "more", linear(4.0)),
    "add_module": lambda t: t.add_module("more", linear(4.0)),
    "replace_nested_submodule": lambda t: t.inner.__setitem__(1, linear(4.0)),
    "nested_submodule_set_to_none": lambda t: setattr(t.inner, "1", None),
    "del_submodule": lambda t: delattr(t, "inner"),
    # Sequential.__delitem__ rebinds inner._modules to a new dict.
    "del_nested_submodule": lambda t: t.inner.__delitem__(0),
    "append": lambda t: t.inner.append(linear(4.0)),
    # Sequential.insert writes inner._modules directly: no setattr, no hook.
    "insert": lambda t: t.inner.insert(0, linear(4.0)),
    "direct_modules_write": lambda t: t.inner._modules.__setitem__("1", linear(4.0)),
    "parameters_dict_rebound": lambda t: setattr(t.inner[0], "_parameters", {}),
    # Swaps the class, deletes the parameter and adds a `parametrizations` submodule.
    "parametrize": lambda t: parametrize.register_parametrization(t.inner[0], "weight", Halve()),
    "load_state_dict_assign": lambda t: t.load_state_dict(
        {k: v + 1 for k, v in t.state_dict().items()}, assign=True),
}


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_every_change_to_the_tree_is_seen(mutation, direction):
    torch.manual_seed(0)
    t = ParamSum()
    x = torch.randn(3, 1)
    with torch.no_grad():
        y = t(x)
        before = t.shift()
        MUTATIONS[mutation](t)
        after = t.shift()  # a fresh walk of parameters()
        assert not torch.allclose(after, before)  # the change matters
        if direction == "forward":
            out, expected = t(x), x + after  # a stale record would return y
        else:
            out, expected = t.inv(y), y - after  # a stale record would return x
        assert torch.allclose(out, expected)
        assert torch.equal(t.log_abs_det_jacobian(x, y), torch.zeros(3))
    key = t._state_key()[1]
    params = list(t.parameters())
    assert len(key) == len(params) and all(p is q for (p, _), q in zip(key, params))


def test_key_is_the_parameters_with_versions():
    flow = realnvp(4, num_layers=3, hidden_dims=(8,))
    for part in flow.parts:
        for _ in range(2):  # the first call builds the plan, the second reuses it
            assert part._state_key()[1] == tuple((p, p._version) for p in part.parameters())
    with torch.no_grad():
        next(flow.parts[0].parameters()).add_(1)
    assert flow.parts[0]._state_key()[1] == tuple((p, p._version) for p in flow.parts[0].parameters())


def test_tree_is_walked_once(monkeypatch):
    part = realnvp(4, num_layers=1, hidden_dims=(8,)).parts[0]
    walks = []
    walk = type(part).named_modules

    def counted(self, *args, **kwargs):
        walks.append(self)
        return walk(self, *args, **kwargs)

    monkeypatch.setattr(type(part), "named_modules", counted)
    for _ in range(3):
        part._state_key()
    assert walks == [part]


# -- whole flows in a TransformedDistribution ------------------------------------------------

BASE = dist.Normal(torch.zeros(4, dtype=F64), 1.0).to_event(1)


def make_flow(seed: int = 0):
    torch.manual_seed(seed)
    return perturb(realnvp(4, num_layers=2, hidden_dims=(8,)).double(), 0.3, seed)


def log_prob(flow, v):
    return dist.TransformedDistribution(BASE, [flow], validate_args=False).log_prob(v)


def reference_log_prob(flow, v):
    """By each part's ``_backward``: no record, no key."""
    lp, y = 0.0, v
    for part in reversed(flow.parts):
        y, ladj = part._backward(y)
        lp = lp - ladj
    return BASE.log_prob(y) + lp


def check_change(flow, change, grad=False):
    """``log_prob`` of one tensor (the last part then sees the same input, so its record would
    answer) before and after ``change(flow)``."""
    v = torch.randn(5, 4, dtype=F64)
    with torch.set_grad_enabled(grad):
        before = log_prob(flow, v)
        change(flow)
        after = log_prob(flow, v)
        expected = reference_log_prob(flow, v)
    assert not torch.allclose(expected, before)
    assert torch.allclose(after, expected)
    return v, before


@pytest.mark.parametrize("grad", [False, True])
def test_replaced_coupling_net(grad):
    new = perturb(copy.deepcopy(make_flow().parts[-1].net), 0.3, seed=1)
    check_change(make_flow(), lambda f: setattr(f.parts[-1], "net", new), grad)


def test_replaced_layer_inside_the_coupling_net():
    # A ModuleList item of Pyro's DenseNN: nothing of pyro-flows runs on the assignment.
    check_change(make_flow(), lambda f: f.parts[-1].net.layers.__setitem__(
        0, perturb(nn.Linear(2, 8).double(), 0.3)))


@pytest.mark.parametrize("assign", [False, True])
def test_load_state_dict(assign):
    other = make_flow(seed=1)
    flow = make_flow()
    v, _ = check_change(flow, lambda f: f.load_state_dict(other.state_dict(), assign=assign))
    with torch.no_grad():
        assert torch.allclose(log_prob(flow, v), reference_log_prob(other, v))


def test_functional_call_swaps_in_and_back():
    flow = make_flow()

    class LogProb(nn.Module):
        def __init__(self):
            super().__init__()
            self.flow = flow

        def forward(self, v):
            return log_prob(self.flow, v)

    params = {"flow." + k: p.detach() + 0.1 for k, p in flow.named_parameters()}
    other = make_flow()
    other.load_state_dict({k[5:]: p for k, p in params.items()}, strict=False)  # no buffers
    v = torch.randn(5, 4, dtype=F64)
    with torch.no_grad():
        original = log_prob(flow, v)
        swapped = torch.func.functional_call(LogProb(), params, (v,))
        restored = log_prob(flow, v)
        assert torch.allclose(swapped, reference_log_prob(other, v))
        assert not torch.allclose(swapped, original)
        assert torch.allclose(restored, original)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_keep_to_themselves(how):
    flow = make_flow()
    v = torch.randn(5, 4, dtype=F64)
    log_prob(flow, v)  # plans built, records kept
    clone = copy.deepcopy(flow) if how == "deepcopy" else pickle.loads(pickle.dumps(flow))
    for part in clone.parts:
        key, params = part._state_key()[1], list(part.parameters())
        assert all(p is q for (p, _), q in zip(key, params)) and len(key) == len(params)
    # A change to either one shows in it and not in the other.
    new = perturb(copy.deepcopy(flow.parts[-1].net), 0.3, seed=1)
    check_change(clone, lambda f: setattr(f.parts[-1], "net", new))
    with torch.no_grad():
        assert torch.allclose(log_prob(flow, v), reference_log_prob(flow, v))
        clone_lp = log_prob(clone, v)
    check_change(flow, lambda f: setattr(f.parts[-1], "net", copy.deepcopy(new)))
    with torch.no_grad():
        assert torch.equal(log_prob(clone, v), clone_lp)


def test_replica_with_copied_dicts_builds_its_own_plan():
    # DataParallel's replicas copy __dict__ (plan included) without __getstate__, then get
    # new _parameters/_modules/_buffers dicts: the original's plan must not serve them.
    t = ParamSum()
    x = torch.randn(3, 1)
    with torch.no_grad():
        t(x)
        replica = t._replicate_for_data_parallel()
        replica.a = nn.Parameter(torch.tensor([5.0]))  # into the replica's own _parameters
        assert torch.allclose(replica(x), x + replica.shift())
        assert torch.allclose(t(x), x + t.shift())
        assert not torch.allclose(replica.shift(), t.shift())
    key, params = replica._state_key()[1], list(replica.parameters())
    assert len(key) == len(params) and all(p is q for (p, _), q in zip(key, params))


def test_with_cache_view_shares_the_tree():
    # The view is a shallow copy sharing _modules and _parameters: a submodule replaced
    # through the view is replaced in the original too, and its cache must see it.
    flow = make_flow()
    view = flow.parts[-1].with_cache(0)
    view._state_key()
    new = perturb(copy.deepcopy(view.net), 0.3, seed=1)
    check_change(flow, lambda f: setattr(view, "net", new))
    assert flow.parts[-1].net is new


@pytest.mark.parametrize("overwrite", [False, True])
def test_to_and_apply(overwrite):
    flow = make_flow()
    v = torch.randn(5, 4, dtype=F64)
    with torch.no_grad():
        log_prob(flow, v)
    # With the flag, _apply writes new Parameter objects straight into _parameters.
    torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
    try:
        flow.float()
        with torch.no_grad():
            assert torch.allclose(log_prob(flow, v.float()), reference_log_prob(flow, v.float()))
        flow.double()
        check_change(flow, lambda f: f._apply(lambda t: t * 1.5))
        if overwrite:
            # Applied to a plain submodule only, no Bijector._apply clears the record: the
            # new parameter objects in the net's _parameters dict must show in the key.
            check_change(flow, lambda f: f.parts[-1].net._apply(lambda t: t * 1.5))
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)
    for part in flow.parts:
        assert all(p is q for (p, _), q in zip(part._state_key()[1], part.parameters()))


def test_conditioned_view_sees_its_parent_change():
    torch.manual_seed(0)
    parent = perturb(ConditionalAffineCoupling(4, context_dim=2, hidden_dims=(8,)).double(), 0.3)
    ctx, x = torch.randn(2, dtype=F64), torch.randn(5, 4, dtype=F64)
    t = parent.condition(ctx)
    with torch.no_grad():
        y = t(x)
        parent.flow.net = perturb(copy.deepcopy(parent.flow.net), 0.3, seed=1)
        expected = parent.flow._forward(x, ctx)[0]
        assert not torch.allclose(expected, y)
        assert torch.allclose(t(x), expected)
    clone = pickle.loads(pickle.dumps(parent))
    key, params = clone.condition(ctx)._state_key()[1], list(clone.parameters())
    assert all(p is q for (p, _), q in zip(key, params)) and len(key) == len(params)


def test_no_grad_matrix_cache_sees_a_replaced_parameter():
    t = perturb(InvertibleLinear(3, lu=True).double(), 0.3)
    x = torch.randn(2, 3, dtype=F64)
    with torch.no_grad():
        t(x)
        t.log_diag = nn.Parameter(t.log_diag + 1.0)
        w, _ = t._build(False)
        assert torch.allclose(t(x.clone()), x @ w.T)  # a new input: the matrix cache answers


def test_full_batch_training_with_fused_adam():
    """The same data tensor every step and an optimizer that bumps no version counter: each
    step must see the updated parameters (a stale record fails backward on a freed graph)."""
    torch.manual_seed(0)
    x = torch.randn(64, 2) * torch.tensor([2.0, 0.5])
    losses = {}
    for fused in (False, True):
        torch.manual_seed(1)
        flow = pyro_flows.build("realnvp", event_shape=(2,), num_layers=2, hidden_dims=(8,))
        d = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
        opt = torch.optim.Adam(flow.parameters(), lr=1e-2, fused=fused)
        for _ in range(5):
            opt.zero_grad()
            loss = -d.log_prob(x).mean()
            loss.backward()
            opt.step()
        losses[fused] = loss.item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_an_optimizer_post_hook_sees_the_updated_parameters():
    """torch runs an optimizer's own post-hooks before global ones: a value computed there
    must already reflect the fused step."""
    torch.manual_seed(0)
    x = torch.randn(16, 2)
    flow = pyro_flows.build("realnvp", event_shape=(2,), num_layers=2, hidden_dims=(8,))
    d = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
    opt = torch.optim.Adam(flow.parameters(), lr=0.1, fused=True)
    seen = []
    opt.register_step_post_hook(lambda *_: seen.append(d.log_prob(x).detach()))
    d.log_prob(x).mean().backward()
    before = d.log_prob(x).detach()
    opt.step()
    fresh = dist.TransformedDistribution(d.base_dist, [flow.with_cache(0)]).log_prob(x.clone())
    assert not torch.equal(seen[0], before)
    assert torch.equal(seen[0], fresh.detach())
