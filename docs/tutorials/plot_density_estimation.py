"""
Density estimation: two moons and handwritten digits
====================================================

A normalizing flow is a density you can both evaluate and sample. This tutorial fits one to
points in the plane, where the density can be drawn, and then to scikit-learn's 8x8 digits,
where it is judged by held-out bits per pixel.

Two calls do the work: :meth:`pyro_flows.FlowModel.build` wraps a registered flow with a
standard Normal base (and, for discrete data, the dequantization that puts pixels on the real
line), and :func:`pyro_flows.fit` trains it by maximum likelihood.
"""

import matplotlib.pyplot as plt
import torch

import pyro_flows
from pyro_flows.data import DIGITS_LEVELS, load_digits_images, two_moons

torch.manual_seed(0)

# %%
# Two moons
# ---------
#
# Five thousand points for training and a thousand held out. A RealNVP of six affine
# couplings has enough freedom to bend a Gaussian into two interleaved arcs.

train, test = two_moons(5000, seed=0), two_moons(1000, seed=1)

model = pyro_flows.FlowModel.build("realnvp", event_shape=(2,), num_layers=6,
                                   hidden_dims=(64, 64))
history = pyro_flows.fit(model, train, val_data=test, epochs=30, batch_size=256, lr=3e-3,
                         progress=False)
print(f"held-out log-likelihood: {-history.val_loss[-1]:.3f} nats per point")

# %%
# The model's density on a grid, next to the held-out data and to draws from the model. Each
# draw is one pass of Gaussian noise through the six couplings.

xs, ys = torch.linspace(-4.0, 4.0, 240), torch.linspace(-2.5, 2.5, 150)
grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
with torch.no_grad():
    density = model.log_prob(grid.reshape(-1, 2)).exp().reshape(grid.shape[:2])
samples = model.sample(2000)

fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharex=True, sharey=True)
axes[0].scatter(*test.T, s=2, alpha=0.5)
axes[0].set_title("held-out data")
axes[1].pcolormesh(xs, ys, density, cmap="magma", shading="auto")
axes[1].set_title("model density")
axes[2].scatter(*samples.T, s=2, alpha=0.5, color="C1")
axes[2].set_title("model samples")
for ax in axes:
    ax.set(xlim=(-4, 4), ylim=(-2.5, 2.5), aspect="equal")
fig.tight_layout()

# %%
# Handwritten digits
# ------------------
#
# The 1797 digits of scikit-learn are 8x8 images whose pixels take the 17 values
# ``0 .. 16``. A density of continuous values put on discrete ones would score infinitely
# well, so ``data_levels=DIGITS_LEVELS`` adds uniform noise to each pixel (dequantization) and
# a logit; the log-likelihood of the noisy data is then a lower bound on that of the digits,
# and ``bits_per_dim`` an upper bound on the bits each pixel costs. Spreading the 17 values
# uniformly costs ``log2(17) = 4.09`` bits per pixel: a model has to beat that.
#
# Here a RealNVP sees each image as a vector of 64 pixels. With 1500 images it soon starts to
# overfit; ``patience=5`` stops five epochs after the best held-out score and restores the
# weights of that epoch. (Scoring and stopping on the same held-out set flatters the score a
# little; keep a third split for an unbiased figure.)

digits = load_digits_images().flatten(1)  # (1797, 64), values 0 .. 16
order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
train, test = digits[order[:1500]], digits[order[1500:]]

model = pyro_flows.FlowModel.build("realnvp", event_shape=(64,), data_levels=DIGITS_LEVELS,
                                   num_layers=8, hidden_dims=(256, 256))
history = pyro_flows.fit(model, train, val_data=test, epochs=40, batch_size=128, lr=1e-3,
                         patience=5, progress=False)
print(f"held-out: {min(history.val_bits_per_dim):.2f} bits per pixel "
      f"(uniform over 17 values: 4.09)")

# %%
# The learning curve, and samples next to real digits. The samples at temperature 1 are
# honest draws from the model; pixel-space flows of this size give recognisable strokes
# rather than crisp digits (the :doc:`Glow tutorial <plot_glow_digits>` does better with
# convolutions).

fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.3, 1, 1]})
axes[0].plot(range(1, len(history.train_loss) + 1),
             [loss / (64 * 0.6931) for loss in history.train_loss], label="train")
axes[0].plot(range(1, len(history.val_bits_per_dim) + 1), history.val_bits_per_dim,
             label="held out")
axes[0].axhline(4.09, color="grey", ls="--", lw=1, label="uniform")
axes[0].set_xlabel("epoch")
axes[0].set_ylabel("bits per pixel")
axes[0].legend()


def tile(images, rows=6):
    """``(rows * cols, 64)`` pixel vectors as one image, with a blank pixel between digits."""
    cols = len(images) // rows
    padded = torch.nn.functional.pad(images.reshape(rows, cols, 8, 8), (0, 1, 0, 1))
    return padded.permute(0, 2, 1, 3).reshape(rows * 9, cols * 9)[:-1, :-1]


axes[1].imshow(tile(test[:36]), cmap="gray_r", vmin=0, vmax=16)
axes[1].set_title("held-out digits")
axes[2].imshow(tile(model.sample(36)), cmap="gray_r", vmin=0, vmax=16)
axes[2].set_title("model samples")
for ax in axes[1:]:
    ax.set_axis_off()
fig.tight_layout()
