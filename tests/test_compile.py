"""``torch.compile(fullgraph=True)`` captures ``log_prob`` and ``sample`` of every registered
transform in one graph (after ActNorm initialization), and compiled equals eager."""

from __future__ import annotations

import shutil

import pytest
import pyro.distributions as dist
import torch

import pyro_flows
from pyro_flows.registry import entry

CASES = [(name, rank) for name in pyro_flows.available() for rank in entry(name).event_dims]
SMALL = {"glow": {"steps": 2, "hidden_channels": 8}, "realnvp": {"steps": 2, "hidden_channels": 8},
         "nice": {"steps": 2, "hidden_channels": 8}, "glow_step": {"hidden_channels": 8}}


def _functions(name, rank):
    shape = (4,) if rank == 1 else (2, 4, 4)
    base_name = name.removeprefix("conditional_")
    if rank == 3:
        kwargs = dict(SMALL.get(base_name, {}))
    else:
        kwargs = {"num_layers": 2} if base_name in ("nice", "realnvp", "glow") else {}
    conditional = entry(name).conditional
    if conditional:
        kwargs["context_dim"] = 3
    t = pyro_flows.build(name, shape, **kwargs)

    def distribution(context):
        flow = t.condition(context) if conditional else t
        base = dist.Normal(torch.zeros(shape), 1.0).to_event(len(shape))
        return dist.TransformedDistribution(base, [flow], validate_args=False)

    def log_prob(x, context):
        return distribution(context).log_prob(x)

    def sample(context):
        return distribution(context).rsample((5,))

    out_shape = tuple(t.forward_shape(shape)) if not conditional else shape
    return log_prob, sample, torch.randn(5, *out_shape), torch.randn(5, 3)


@pytest.mark.parametrize("name, rank", CASES, ids=[f"{n}-{r}d" for n, r in CASES])
def test_fullgraph_capture(name, rank):
    torch._dynamo.reset()
    log_prob, sample, x, context = _functions(name, rank)
    compiled = torch.compile(log_prob, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x, context), log_prob(x, context), atol=1e-5)
    torch.manual_seed(0)
    drawn = torch.compile(sample, fullgraph=True, backend="eager")(context)
    torch.manual_seed(0)
    assert torch.allclose(drawn, sample(context), atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="inductor needs a C compiler")
@pytest.mark.parametrize("name, rank", [("realnvp", 1), ("glow", 1), ("glow", 3)])
def test_inductor_compiles_and_matches_eager(name, rank):
    torch._dynamo.reset()
    log_prob, sample, x, context = _functions(name, rank)
    compiled = torch.compile(log_prob, fullgraph=True)
    assert torch.allclose(compiled(x, context), log_prob(x, context), atol=1e-4)


def test_actnorm_initializes_before_compiling():
    """Initialization is data dependent and happens once, eagerly; afterwards the compiled
    graph has no branch on tensor values."""
    torch._dynamo.reset()
    t = pyro_flows.build("actnorm", (3,))
    data = 5 + 2 * torch.randn(100, 3)
    pyro_flows.initialize(t, data)
    compiled = torch.compile(lambda y: t.inv(y), fullgraph=True, backend="eager")
    z = compiled(data)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-4)


def test_flow_model_log_prob_compiles_to_one_pass_per_transform():
    """FlowModel pulls data back with each transform's own log-det, so the compiled graph,
    which cannot use the transforms' caches, still runs each transform once."""
    torch._dynamo.reset()
    model = pyro_flows.FlowModel.build("glow", (1, 4, 4), levels=1, steps=2, hidden_channels=8)
    x = torch.randn(6, 1, 4, 4)
    model.log_prob(x)
    calls = []
    step = model.transforms[0].levels[0][0]
    original = step.inverse_and_ladj
    step.inverse_and_ladj = lambda *a: (calls.append(1), original(*a))[1]
    compiled = torch.compile(model.log_prob, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x.clone()), model.distribution.log_prob(x.clone()), atol=1e-5)
    assert len(calls) == 2  # once traced, once in the reference; no extra forward pass
