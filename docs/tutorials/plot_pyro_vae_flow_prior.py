"""
Pyro's "VAE with a normalizing flow prior", with pyro-flows
===========================================================

Pyro's tutorial `Variational Autoencoder with a Normalizing Flow prior
<https://pyro.ai/examples/vae_flow_prior.html>`_ replaces a VAE's standard Normal prior
``p(z)`` by a masked autoregressive flow from zuko, trained with the rest of the model. Here is
the same idea with pyro-flows, shortened to 8x8 digits and a two-dimensional latent space,
where the prior can be drawn: the prior is a Pyro
:class:`~pyro.distributions.TransformedDistribution` of a Normal through a RealNVP, and
``pyro.module`` registers the flow in the model.
"""

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from sklearn.datasets import load_digits
from torch import nn

import pyro_flows

pyro.set_rng_seed(0)

# %%
# Data
# ----
#
# scikit-learn's digits, binarized at half intensity: 1797 images of 64 pixels.

digits = load_digits()
images = torch.tensor(digits.data > 8, dtype=torch.float32)
labels = torch.tensor(digits.target)
train, test = images[:1500], images[1500:]
LATENT = 2

# %%
# The model
# ---------
#
# A Gaussian encoder and a Bernoulli decoder, as in Pyro's VAE tutorial. The prior is either
# the usual standard Normal or that Normal pushed through a RealNVP of four couplings.


class VAE(nn.Module):
    def __init__(self, flow_prior: bool):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 2 * LATENT))
        self.decoder = nn.Sequential(nn.Linear(LATENT, 256), nn.ReLU(), nn.Linear(256, 64))
        self.flow = (pyro_flows.build("realnvp", event_shape=(LATENT,), num_layers=4,
                                      hidden_dims=(64, 64)) if flow_prior else None)

    def prior(self):
        base = dist.Normal(torch.zeros(LATENT), 1.0).to_event(1)
        return base if self.flow is None else dist.TransformedDistribution(base, [self.flow])

    def model(self, x):
        pyro.module("decoder", self.decoder)
        if self.flow is not None:
            pyro.module("prior", self.flow)
        with pyro.plate("batch", len(x)):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def posterior(self, x):
        loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
        return dist.Normal(loc, nn.functional.softplus(raw_scale) + 1e-3).to_event(1)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("batch", len(x)):
            pyro.sample("z", self.posterior(x))


# %%
# Training
# --------
#
# Both VAEs see the same batches for 80 epochs.


def train_vae(vae, epochs=80):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 2e-3}), Trace_ELBO())
    for _ in range(epochs):
        for batch in train[torch.randperm(len(train))].split(100):
            svi.step(batch)
    with torch.no_grad():
        return -Trace_ELBO(num_particles=20).loss(vae.model, vae.guide, test) / len(test)


vaes = {"Normal prior": VAE(flow_prior=False), "flow prior": VAE(flow_prior=True)}
for name, vae in vaes.items():
    print(f"{name:12s} held-out ELBO: {train_vae(vae):.2f} nats per image")

# %%
# What the prior learned
# ----------------------
#
# The encoder's means of the training images, coloured by digit, over each prior's density.
# A standard Normal prior pulls the codes into one round blob; the flow prior reshapes itself
# to the clusters the encoder makes, so the KL term of the ELBO costs less and samples from
# the prior land where the decoder has learned to draw digits.

fig, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
for ax, (name, vae) in zip(axes, vaes.items()):
    with torch.no_grad():
        codes = vae.posterior(train).mean
        reach = codes.abs().max().item() * 1.1
        axis = torch.linspace(-reach, reach, 160)
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)
        density = vae.prior().log_prob(grid).exp()
    ax.contourf(grid[..., 0], grid[..., 1], density, levels=15, cmap="Greys")
    points = ax.scatter(codes[:, 0], codes[:, 1], c=labels[:1500], cmap="tab10", s=4)
    ax.set(title=name, aspect="equal", xlabel="z[0]", ylabel="z[1]")
fig.colorbar(points, ax=axes, label="digit", ticks=range(10), shrink=0.8)

# %%
# Samples
# -------
#
# Digits decoded from 64 draws of each prior (the decoder's pixel probabilities).


def tile(pixels):
    """64 images of 64 pixels, as an 8 x 8 grid with a blank line between images."""
    padded = nn.functional.pad(pixels.reshape(8, 8, 8, 8), (0, 1, 0, 1), value=0.0)
    return padded.permute(0, 2, 1, 3).reshape(72, 72)[:-1, :-1]


fig, axes = plt.subplots(1, 2, figsize=(9, 4.8), layout="constrained")
for ax, (name, vae) in zip(axes, vaes.items()):
    with torch.no_grad():
        pixels = torch.sigmoid(vae.decoder(vae.prior().sample((64,))))
    ax.imshow(tile(pixels), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(f"samples, {name}")
    ax.set_axis_off()
