"""
Glow on images, and sampling at a temperature
=============================================

Glow (Kingma & Dhariwal, 2018) models images with convolutions: each step normalizes the
channels (ActNorm), mixes them with an invertible 1x1 convolution and transforms half of them
with an affine coupling whose scale and shift come from a small convolutional network. A
multi-scale architecture squeezes the image into more channels at lower resolution and sets
half of them aside at each level, under a learned prior.

This tutorial fits a small Glow to scikit-learn's 8x8 digits and samples it at several
temperatures: draws from a base Normal whose standard deviation is scaled by ``T < 1``, which
trades diversity for cleaner images.
"""

import matplotlib.pyplot as plt
import torch

import pyro_flows
from pyro_flows.data import DIGITS_LEVELS, load_digits_images

torch.manual_seed(0)

# %%
# The model
# ---------
#
# Images keep their shape ``(1, 8, 8)``. Two levels of four Glow steps each, with 48 channels
# in the coupling networks; ``data_levels=17`` dequantizes the integer pixels ``0 .. 16``.
# The first batch that :func:`pyro_flows.fit` sees sets every ActNorm so that its output has
# zero mean and unit variance per channel, Glow's data-dependent initialization.

digits = load_digits_images()  # (1797, 1, 8, 8), values 0 .. 16
order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
train, test = digits[order[:1500]], digits[order[1500:]]

model = pyro_flows.FlowModel.build("glow", event_shape=(1, 8, 8), data_levels=DIGITS_LEVELS,
                                   levels=2, steps=4, hidden_channels=48)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

history = pyro_flows.fit(model, train, val_data=test, epochs=25, batch_size=64, lr=2e-3,
                         progress=False)
print(f"held-out: {history.val_bits_per_dim[-1]:.2f} bits per pixel after "
      f"{len(history.val_loss)} epochs ({sum(history.seconds):.0f} s)")

# %%
# Temperature
# -----------
#
# ``model.sample(n, temperature=T)`` draws ``z ~ N(0, T^2 I)`` and maps it through the flow.
# At ``T = 0`` every draw is the image of the base's mode; as ``T`` grows the samples become
# more varied and, past the range the model has learned well, noisier. Glow's authors sampled
# at ``T = 0.7``. The same base noise is used in every column, so a row shows one draw
# cooling down.

temperatures = [0.0, 0.4, 0.6, 0.8, 1.0]
rows = []
for t in temperatures:
    torch.manual_seed(1)  # the same base draws at every temperature
    rows.append(model.sample(8, temperature=t))

fig, axes = plt.subplots(8, len(temperatures) + 1, figsize=(6.5, 8.5))
for i in range(8):
    axes[i, 0].imshow(test[i, 0], cmap="gray_r", vmin=0, vmax=16)
    for j, samples in enumerate(rows):
        axes[i, j + 1].imshow(samples[i, 0], cmap="gray_r", vmin=0, vmax=16)
axes[0, 0].set_title("data", fontsize=10)
for j, t in enumerate(temperatures):
    axes[0, j + 1].set_title(f"T = {t}", fontsize=10)
for ax in axes.flat:
    ax.set_axis_off()
fig.tight_layout()

# %%
# A larger batch at ``T = 0.7``, and the learning curve. ``log2(17) = 4.09`` bits per pixel
# is the cost of a uniform guess.

fig, (curve, grid) = plt.subplots(1, 2, figsize=(10, 4.2),
                                  gridspec_kw={"width_ratios": [1.2, 1]})
epochs = range(1, len(history.val_bits_per_dim) + 1)
curve.plot(epochs, history.val_bits_per_dim, color="C1", label="held out")
curve.axhline(4.09, color="grey", ls="--", lw=1, label="uniform")
curve.set(xlabel="epoch", ylabel="bits per pixel")
curve.legend()

samples = model.sample(64, temperature=0.7)
padded = torch.nn.functional.pad(samples[:, 0], (0, 1, 0, 1)).reshape(8, 8, 9, 9)
grid.imshow(padded.permute(0, 2, 1, 3).reshape(72, 72)[:-1, :-1], cmap="gray_r", vmin=0,
            vmax=16)
grid.set_title("samples at T = 0.7")
grid.set_axis_off()
fig.tight_layout()
