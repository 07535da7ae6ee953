"""
Flow guides against a Gaussian guide and NUTS
=============================================

A mean-field Gaussian guide (Pyro's :class:`~pyro.infer.autoguide.AutoNormal`) is fast, but
its posterior is an axis-aligned ellipse in the unconstrained space. When the true posterior
bends, it has to leave mass out. :class:`pyro_flows.infer.AutoFlow` starts from exactly that
Gaussian and lets a normalizing flow bend it.

This tutorial fits both to a small model whose posterior is curved, and checks them with the
tools of :mod:`pyro_flows.diagnostics` against NUTS, as ArviZ users would check any sampler.
"""

import arviz
import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_flows.diagnostics import compare_with_mcmc, psis_khat, to_inference_data
from pyro_flows.infer import AutoFlow

# %%
# A curved posterior
# ------------------
#
# Two effects ``a`` and ``b`` with standard Normal priors, and one noisy measurement of
# ``a + b**2``. The data pin down the combination, not the parts: the posterior is a curved
# ridge along ``a = 1 - b**2``, the kind of shape a weakly identified model leaves behind.

y = torch.tensor(1.0)


def model(y):
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(a + b**2, 0.4), obs=y)


# %%
# The gold standard: NUTS
# -----------------------

pyro.set_rng_seed(0)
mcmc = MCMC(NUTS(model), num_samples=800, warmup_steps=400, disable_progbar=True)
mcmc.run(y)
idata_nuts = arviz.from_pyro(mcmc)
print(arviz.summary(idata_nuts, kind="stats"))

# %%
# Two guides, one training loop
# -----------------------------
#
# The same SVI loop trains both, as :doc:`/getting_started` recommends for flow guides: eight
# particles per step to average out the gradient noise, Pyro's ``ClippedAdam`` capping every
# gradient entry at 1 (on a curved posterior one rare draw can give a gradient tens of times the
# usual size, and plain Adam would follow it for ten steps), and a learning rate decaying to a
# tenth of its start so that the last steps settle. ``AutoFlow`` takes the usual autoguide
# arguments plus the flow's; its defaults (eight RealNVP couplings) are used here.


def train(guide, steps=1000):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=0)
    optim = pyro.optim.ClippedAdam({"lr": 0.01, "clip_norm": 1.0, "lrd": 0.1 ** (1 / steps)})
    svi = SVI(model, guide, optim, elbo)
    return [svi.step(y) for _ in range(steps)]


guides = {"AutoNormal": AutoNormal(model), "AutoFlow": AutoFlow(model)}
losses = {name: train(guide) for name, guide in guides.items()}
for name, trace in losses.items():
    print(f"{name:10s} final loss (-ELBO, mean of last 200 steps): "
          f"{sum(trace[-200:]) / 200:.3f}")

# %%
# How far can each guide be trusted?
# ----------------------------------
#
# :func:`~pyro_flows.diagnostics.psis_khat` fits a Pareto tail to the importance weights
# ``p(x, z) / q(z)``. Below 0.5 the guide covers the posterior well (a negative value means
# the weights have no heavy tail at all); above 0.7 it misses mass and its estimates should
# not be trusted.

for name, guide in guides.items():
    print(f"{name:10s} k-hat = {psis_khat(model, guide, y, num_samples=2000):.2f}")

# %%
# :func:`~pyro_flows.diagnostics.to_inference_data` draws a guide's posterior into an
# :class:`arviz.InferenceData`, and :func:`~pyro_flows.diagnostics.compare_with_mcmc`
# tabulates its moments against the NUTS run: ``std_mean_error`` is the error of the mean in
# posterior standard deviations, ``sd_ratio`` below 1 means the guide is overconfident.

pyro.set_rng_seed(1)
idata = {name: to_inference_data(model, guide, y, num_samples=2000)
         for name, guide in guides.items()}
for name in guides:
    print(f"\n{name}\n", compare_with_mcmc(idata[name], mcmc).round(3))

# %%
# What the guides look like
# -------------------------
#
# Draws of each posterior over the contours of the exact one (the prior times the likelihood
# on a grid). The Gaussian guide can only put an ellipse inside the ridge; the flow bends
# along it, as NUTS does.

grid_a, grid_b = torch.meshgrid(torch.linspace(-3, 2.5, 200), torch.linspace(-2.5, 2.5, 200),
                                indexing="xy")
log_post = (dist.Normal(0.0, 1.0).log_prob(grid_a) + dist.Normal(0.0, 1.0).log_prob(grid_b)
            + dist.Normal(grid_a + grid_b**2, 0.4).log_prob(y))

fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
sources = {"NUTS": idata_nuts, **idata}
colors = {"NUTS": "k", "AutoNormal": "C0", "AutoFlow": "C1"}
for ax, (name, source) in zip(axes, sources.items()):
    ax.contour(grid_a, grid_b, log_post, levels=log_post.max() - torch.tensor([8.0, 4.5, 2, 0.5]),
               colors="grey", linewidths=0.8)
    post = source.posterior
    ax.scatter(post["a"].values.reshape(-1)[:800], post["b"].values.reshape(-1)[:800], s=3,
               alpha=0.5, color=colors[name])
    ax.set_title(name)
    ax.set_xlabel("a")
axes[0].set(xlim=(-3, 2.5), ylim=(-2.5, 2.5), ylabel="b")
fig.tight_layout()

# %%
# The marginal of ``a`` with ArviZ's own density plot: the Gaussian guide is too narrow and
# misplaced, the flow much closer to NUTS.

axes = arviz.plot_density([idata_nuts, idata["AutoNormal"], idata["AutoFlow"]],
                          data_labels=["NUTS", "AutoNormal", "AutoFlow"], var_names=["a"],
                          hdi_prob=0.995, shade=0.1, figsize=(7, 3.5), colors=["k", "C0", "C1"])
