"""Pictures of a fit: the loss curve, a grid of image samples, a 2-D density. Every PNG is
written atomically (a temporary file in the target directory, then a rename)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checkpoint import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["density_plot", "image_grid", "loss_curve", "save_figure"]


def _figure(**kwargs) -> Figure:
    # A figure outside pyplot: drawing it needs no screen and leaves the process's backend (a
    # notebook's, a GUI's) as the user set it.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as a PNG to ``path`` atomically; a figure made with pyplot is closed."""
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100,
                                                        bbox_inches="tight"))
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:  # only pyplot's own figures need closing
            pyplot.close(fig)


def loss_curve(history: dict, path: str | os.PathLike, unit: str = "nats per example",
               scale: float = 1.0) -> Path:
    """Training and validation loss per epoch (multiplied by ``scale``, labelled ``unit``)."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = range(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, [v * scale for v in history["train_loss"]], marker="o", label="train")
    if history.get("val_loss"):
        ax.plot(epochs, [v * scale for v in history["val_loss"]], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"negative log-likelihood ({unit})")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def image_grid(images: torch.Tensor, path: str | os.PathLike, levels: int | None,
               title: str = "") -> Path:
    """Images ``(N, C, H, W)`` (values ``0 .. levels - 1``, or any range without ``levels``)
    tiled in a square grid; one channel is shown in grey, three as RGB."""
    x = images.detach().float().cpu()
    lo, hi = (0.0, levels - 1.0) if levels else (x.min().item(), x.max().item())
    x = ((x - lo) / max(hi - lo, 1e-8)).clamp(0, 1)
    n, c, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
    inches = 0.09  # per pixel: an 8x8 digit is about 0.8 inch wide
    fig = _figure(figsize=(max(3.0, inches * cols * (w + 1)), max(3.0, inches * rows * (h + 1))))
    ax = fig.subplots()
    ax.imshow((grid[0] if c == 1 else grid[:3].permute(1, 2, 0)).numpy(),
              cmap="gray" if c == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def density_plot(log_prob, data: torch.Tensor, samples: torch.Tensor,
                 path: str | os.PathLike) -> Path:
    """For 2-D data: held-out points, the model's density on a grid, and model samples."""
    data, samples = data.detach().cpu(), samples.detach().cpu()
    lo, hi = data.min(0).values, data.max(0).values
    pad = 0.1 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    xs, ys = torch.linspace(lo[0], hi[0], 150), torch.linspace(lo[1], hi[1], 150)
    xx, yy = torch.meshgrid(xs, ys, indexing="xy")
    with torch.no_grad():
        density = log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)).exp()
    fig = _figure(figsize=(15, 4.5))
    axes = fig.subplots(1, 3)
    data, samples = data.numpy(), samples.numpy()
    axes[0].scatter(data[:, 0], data[:, 1], s=2, alpha=0.4)
    axes[0].set_title("held-out data")
    axes[1].contourf(xx.numpy(), yy.numpy(), density.cpu().reshape(xx.shape).numpy(), levels=30,
                     cmap="viridis")
    axes[1].set_title("model density")
    axes[2].scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, color="C1")
    axes[2].set_title("model samples")
    for ax in axes:
        ax.set_xlim(lo[0].item(), hi[0].item())
        ax.set_ylim(lo[1].item(), hi[1].item())
        ax.set_aspect("equal")
    return save_figure(fig, path)
