"""Quickstart: fit RealNVP and a vector Glow to two moons by maximum likelihood.

Each flow is a Pyro ``TransformModule``; ``TransformedDistribution(base, flow)`` is the density.
The script trains both with Adam, prints the held-out log-likelihood per example and writes a
density plot::

    python examples/quickstart.py --steps 1500 --out quickstart.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from tqdm import trange

import pyro_flows
from pyro_flows.data import two_moons
from pyro_flows.plots import save_figure


def fit_flow(name: str, train: torch.Tensor, steps: int, seed: int) -> dist.TransformedDistribution:
    pyro.set_rng_seed(seed)
    flow = pyro_flows.build(name, event_shape=(2,), num_layers=6, hidden_dims=(64, 64))
    pyro.module(name, flow)  # registers the parameters in Pyro's param store
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    density = dist.TransformedDistribution(base, flow)
    optim = torch.optim.Adam(flow.parameters(), lr=2e-3)
    bar = trange(steps, desc=name, leave=False)
    for _ in bar:
        batch = train[torch.randint(len(train), (256,))]
        loss = -density.log_prob(batch).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        bar.set_postfix(nll=f"{loss.item():.3f}")
    return density


def plot(densities: dict[str, dist.TransformedDistribution], data: torch.Tensor, path: str) -> None:
    xx, yy = torch.meshgrid(torch.linspace(-4, 4, 200), torch.linspace(-3, 3, 200), indexing="xy")
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)
    fig, axes = plt.subplots(1, len(densities) + 1, figsize=(5 * (len(densities) + 1), 4))
    axes[0].scatter(data[:, 0], data[:, 1], s=2, alpha=0.4)
    axes[0].set_title("held-out data")
    for ax, (name, d) in zip(axes[1:], densities.items()):
        with torch.no_grad():
            p = d.log_prob(points).exp().reshape(200, 200)
        ax.contourf(xx, yy, p, levels=30, cmap="viridis")
        ax.set_title(f"{name} density")
    for ax in axes:
        ax.set_xlim(-4, 4)
        ax.set_ylim(-3, 3)
        ax.set_aspect("equal")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="quickstart.png")
    args = parser.parse_args(argv)

    train, test = two_moons(5000, seed=args.seed), two_moons(2000, seed=args.seed + 1)
    densities, scores = {}, {}
    for name in ("realnvp", "glow"):
        densities[name] = fit_flow(name, train, args.steps, args.seed)
        with torch.no_grad():
            scores[name] = densities[name].log_prob(test).mean().item()
        print(f"{name:8s} held-out log-likelihood: {scores[name]:.3f} nats per example")
    plot(densities, test, args.out)
    print(f"density plot written to {args.out}")
    return scores


if __name__ == "__main__":
    main()
