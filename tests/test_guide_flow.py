"""A guide's flow learns at a Gaussian guide's pace: its conditioners' hidden layers take
Adam steps whose effect does not grow with their width (``pyro_flows.infer.guide_flow``)."""

import pytest
import torch
from torch import nn

from pyro_flows.infer import build_guide_flow
from pyro_flows.infer.guide_flow import _FanInScaledLinear, _fan_in_scaled, _WidthScaledOutput


def hidden_layers(flow: nn.Module) -> list[nn.Linear]:
    return [m for m in flow.modules() if isinstance(m, _FanInScaledLinear)]


@pytest.mark.parametrize("name, context_dim", [("realnvp", 0), ("nice", 0), ("glow", 0),
                                                ("conditional_realnvp", 3)])
def test_every_hidden_layer_and_no_other_is_fan_in_scaled(name, context_dim):
    flow = build_guide_flow(name, 6, context_dim, num_layers=2, hidden_dims=(16, 24, 32))
    nets = [m for m in flow.modules() if isinstance(m, _WidthScaledOutput)]
    assert len(nets) == 2
    for net in nets:
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        scaled = [isinstance(m, _FanInScaledLinear) for m in linears]
        # the first layer reads the coupling's input and the last is the output: both as built
        assert scaled == [False, True, True, False]


def test_the_swap_keeps_the_function_the_names_and_the_random_stream():
    torch.manual_seed(0)
    layer = nn.Linear(64, 8)
    state = torch.get_rng_state()
    scaled = _fan_in_scaled(layer)
    assert torch.equal(torch.get_rng_state(), state)
    assert set(dict(scaled.named_parameters())) == {"weight", "bias"}
    x = torch.randn(5, 64)
    assert torch.allclose(scaled(x), layer(x), atol=1e-6)


@pytest.mark.parametrize("width", [16, 512])
def test_a_sign_coherent_step_moves_a_hidden_unit_by_lr_times_the_mean_input(width):
    # Adam moves every weight entry by about lr, in its gradient's sign, whatever the gradient's
    # size; the hidden unit must then move by lr * mean(x), not lr * sum(x), at any width.
    layer = _fan_in_scaled(nn.Linear(width, 3))
    x = torch.rand(4, width)
    before = layer(x)
    with torch.no_grad():
        layer.weight.add_(0.01)
    assert torch.allclose(layer(x) - before, 0.01 * x.mean(-1, keepdim=True).expand(4, 3),
                          atol=1e-5)


def test_a_default_device_does_not_change_the_flows_draws():
    """The flow's initialization comes from FLOW_SEED on the CPU generator, whatever default
    device the user set (``torch.device("meta")`` stands in for ``set_default_device("cuda")``,
    whose generator the seed does not reach)."""
    reference = build_guide_flow("realnvp", 4)
    with torch.device("meta"):
        flow = build_guide_flow("realnvp", 4, like=torch.empty(0, device="cpu"))
    assert [n for n, _ in flow.named_parameters()] == [n for n, _ in reference.named_parameters()]
    for a, b in zip(flow.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
