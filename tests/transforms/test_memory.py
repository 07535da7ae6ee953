"""Memory-saving invertible backprop gives the gradients of plain backprop."""

from __future__ import annotations

import pytest
import torch
import pyro.distributions as dist

import pyro_flows

from helpers import perturb


def _grads(transform, x, context=None, sample=False):
    t = transform.condition(context) if context is not None else transform
    shape = x.shape[1:]
    base = dist.Normal(torch.zeros(shape, dtype=x.dtype), 1.0).to_event(len(shape))
    d = dist.TransformedDistribution(base, [t])
    if sample:
        loss = d.rsample((3,)).pow(2).sum()
    else:
        loss = -d.log_prob(x).sum()
    params = list(transform.parameters())
    inputs = params + ([context] if context is not None else [])
    grads = torch.autograd.grad(loss, inputs)
    return loss.detach(), grads


def _pair(name, shape, **kwargs):
    torch.manual_seed(0)
    plain = perturb(pyro_flows.build(name, shape, **kwargs).double())
    lean = pyro_flows.build(name, shape, memory_efficient=True, **kwargs).double()
    lean.load_state_dict(plain.state_dict())
    return plain, lean


@pytest.mark.parametrize("step_type", ["glow", "realnvp", "nice"])
@pytest.mark.parametrize("sample", [False, True])
def test_glow_gradients_match_plain_backprop(step_type, sample):
    plain, lean = _pair(step_type, (2, 4, 4), levels=2, steps=3, hidden_channels=8)
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    torch.manual_seed(1)
    loss_a, grads_a = _grads(plain, x, sample=sample)
    torch.manual_seed(1)
    loss_b, grads_b = _grads(lean, x, sample=sample)
    assert torch.allclose(loss_a, loss_b, atol=1e-10)
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)


def test_conditional_glow_gradients_reach_the_context():
    torch.manual_seed(0)
    plain = perturb(pyro_flows.build(
        "conditional_glow", (2, 4, 4), context_dim=3, levels=1, steps=2, hidden_channels=8).double())
    lean = pyro_flows.build("conditional_glow", (2, 4, 4), context_dim=3, levels=1, steps=2,
                            hidden_channels=8, memory_efficient=True).double()
    lean.load_state_dict(plain.state_dict())
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    context = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    _, grads_a = _grads(plain, x, context)
    _, grads_b = _grads(lean, x, context)
    assert grads_b[-1].abs().sum() > 0
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["nice", "realnvp", "glow"])
def test_vector_flow_gradients_match_plain_backprop(kind):
    plain, lean = _pair(kind, (6,), num_layers=4, hidden_dims=(16, 16))
    x = torch.randn(8, 6, dtype=torch.float64)
    loss_a, grads_a = _grads(plain, x)
    loss_b, grads_b = _grads(lean, x)
    assert torch.allclose(loss_a, loss_b, atol=1e-10)
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)


def test_no_graph_is_kept_inside_a_memory_efficient_level():
    torch.manual_seed(0)
    lean = pyro_flows.build("glow", (1, 4, 4), levels=1, steps=4, hidden_channels=8,
                            memory_efficient=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        z, ladj = lean.inverse_and_ladj(torch.randn(2, 1, 4, 4))
    lean_saved = sum(saved)
    plain = pyro_flows.build("glow", (1, 4, 4), levels=1, steps=4, hidden_channels=8)
    plain.load_state_dict(lean.state_dict())
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        plain.inverse_and_ladj(torch.randn(2, 1, 4, 4))
    assert lean_saved * 5 < sum(saved)


def test_unbatched_context_reaches_every_image_of_the_batch_in_backward():
    """A context without batch dimensions broadcasts against the batch: forward did so, and the
    memory-saving backward, which reruns the coupling on the rebuilt input, must too."""
    torch.manual_seed(0)
    plain = perturb(pyro_flows.transforms.GlowStep((4, 4, 4), hidden_channels=8,
                                                   context_dim=2).double())
    lean = pyro_flows.transforms.GlowStep((4, 4, 4), hidden_channels=8, context_dim=2).double()
    lean.memory_efficient = True
    lean.load_state_dict(plain.state_dict())
    y = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    context = torch.randn(2, dtype=torch.float64, requires_grad=True)
    grads = []
    for step in (plain, lean):
        x = pyro_flows.transforms.ConditionalBijector(step, 2).condition(context).inv(y)
        grads.append(torch.autograd.grad(x.square().sum(), [context, *step.parameters()]))
    assert grads[1][0].abs().sum() > 0
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10)
