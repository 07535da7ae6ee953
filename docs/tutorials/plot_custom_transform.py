"""
Write and register your own transform
=====================================

Every pyro-flows transform keeps one public protocol: it gives the value **and** the log-det
of its Jacobian together, in both directions. A new transform subclasses
:class:`pyro_flows.transforms.Bijector` and implements two methods:

``call_and_ladj(x, context=None) -> (y, ladj)``
    the forward map, Pyro's sampling direction (base -> data), and ``log|det dy/dx|``;
``inverse_and_ladj(y, context=None) -> (x, ladj)``
    the inverse (data -> base), with the log-det **of the forward map** at that ``x``.

The log-det has the batch shape of the input (the event dimensions summed). That is all:
Pyro's ``_call``, ``_inverse`` and ``log_abs_det_jacobian`` come from the base class, so the
transform works inside ``TransformedDistribution``, Pyro guides and every pyro-flows tool
(:class:`~pyro_flows.FlowModel`, :func:`~pyro_flows.fit`, memory-saving backprop,
:func:`~pyro_flows.initialize`). Keep the rules of the house:

* compute from the inputs, the parameters and the buffers only; never change a parameter
  inside a call (data-dependent set-up belongs in an explicit step);
* register tensors as parameters or buffers, so ``.to(device)`` and ``state_dict`` follow;
* a transform with a context is built with a ``context_dim`` and reached through a
  conditional twin's ``condition(context)``
  (:class:`~pyro_flows.transforms.ConditionalBijector`).

Optionally a transform may offer ``rebuild(out, context, inverse)`` to make memory-saving
backprop cheaper (see :func:`pyro_flows.transforms.memory.rebuild`); without it the input is
rebuilt by running the inverse.
"""

import matplotlib.pyplot as plt
import torch
from torch import nn

import pyro_flows
from pyro_flows.transforms import Bijector

torch.manual_seed(0)


# %%
# A monotone elementwise map
# --------------------------
#
# ``y = a sinh(x) + b x + c`` with ``a >= 0`` and ``b > 0`` is strictly increasing, so it is
# invertible; it has heavier tails than any affine map, which a Gaussian base alone cannot
# give. Its log-det is ``sum(log(a cosh(x) + b))``. The inverse has no closed form, so it is
# found with Newton's method, and the log-det is evaluated at the ``x`` found.


class ElementwiseSinh(Bijector):
    def __init__(self, event_shape):
        super().__init__(event_dim=len(event_shape))
        self.raw_a = nn.Parameter(torch.full(event_shape, -2.0))
        self.raw_b = nn.Parameter(torch.zeros(event_shape))
        self.c = nn.Parameter(torch.zeros(event_shape))

    def _coefficients(self):
        return nn.functional.softplus(self.raw_a), torch.exp(self.raw_b)

    def _ladj(self, x, a, b):
        return torch.log(a * torch.cosh(x) + b).flatten(x.dim() - self.event_dim).sum(-1)

    def call_and_ladj(self, x, context=None):
        a, b = self._coefficients()
        return a * torch.sinh(x) + b * x + self.c, self._ladj(x, a, b)

    def inverse_and_ladj(self, y, context=None):
        a, b = self._coefficients()
        x = (y - self.c) / (a + b)
        for _ in range(60):
            x = x - (a * torch.sinh(x) + b * x + self.c - y) / (a * torch.cosh(x) + b)
        return x, self._ladj(x, a, b)


# %%
# Register it
# -----------
#
# :func:`pyro_flows.register` makes it a name that :func:`pyro_flows.build`, the command line
# and :class:`~pyro_flows.FlowModel` know. (A separate package would publish the builder under
# the entry-point group ``pyro_flows.transforms`` instead.)


@pyro_flows.register("sinh", event_dims=(1,), replace=True)
def sinh(event_shape, **kwargs):
    return ElementwiseSinh(event_shape, **kwargs)


t = pyro_flows.build("sinh", event_shape=(1,))
print("registered:", "sinh" in pyro_flows.available())

# %%
# Check it like the test suite does
# ---------------------------------
#
# The package's contract test runs every registered transform through the same checks: the
# round trip, and the log-det against the autograd Jacobian in float64.

with torch.no_grad():
    for p in t.parameters():
        p.add_(0.3 * torch.randn_like(p))
t64 = t.double()
x = torch.randn(200, 1, dtype=torch.float64)
with torch.no_grad():
    y = t64(x)
    x_back = t64.inv(y.clone())
print("round-trip error:", float((x_back - x).abs().max()))
slopes = torch.func.vmap(torch.func.jacrev(lambda v: t64.call_and_ladj(v)[0]))(x)
exact = torch.linalg.slogdet(slopes)[1].detach()
print("log-det error:", float((t64.log_abs_det_jacobian(x, y).detach() - exact).abs().max()))

# %%
# Fit a heavy-tailed density
# --------------------------
#
# Data from a Student-t with 2 degrees of freedom. A Gaussian base through an affine map can
# only fit a Gaussian; followed by the sinh map it reaches the tails.

data = torch.distributions.StudentT(2.0).sample((4000, 1)).float()
model = pyro_flows.FlowModel.build("sinh", event_shape=(1,))
history = pyro_flows.fit(model, data[:3000], val_data=data[3000:], epochs=40, batch_size=250,
                         lr=2e-2, warmup_steps=10, progress=False)
gaussian = torch.distributions.Normal(data[:3000].mean(), data[:3000].std())
print(f"held-out NLL: {history.val_loss[-1]:.3f} nats "
      f"(a fitted Gaussian: {-gaussian.log_prob(data[3000:]).mean():.3f})")

grid = torch.linspace(-8, 8, 400)[:, None]
with torch.no_grad():
    density = model.log_prob(grid).exp()
fig, ax = plt.subplots(figsize=(6, 3.2))
held_out = data[3000:, 0]
inside = held_out[held_out.abs() < 8]
bin_width = 16 / 120  # a density over all the held-out data, not only the part drawn
ax.hist(inside.numpy(), bins=120, weights=torch.full_like(inside, 1 / (len(held_out) * bin_width)),
        alpha=0.4, label="held-out data")
ax.plot(grid[:, 0], density, label="fitted flow")
ax.plot(grid[:, 0], torch.distributions.StudentT(2.0).log_prob(grid[:, 0]).exp(), "--",
        label="true Student-t(2)")
ax.set_yscale("log")
ax.set_ylim(1e-4, 1)
ax.legend()
ax.set_title("A Gaussian through one custom transform")
fig.tight_layout()
plt.show()
