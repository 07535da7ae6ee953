"""A VAE on dynamically binarized Fashion-MNIST (or scikit-learn's 8x8 digits) with two posteriors:
the encoder's diagonal Gaussian, and the same Gaussian refined by a conditional RealNVP
(:class:`~pyro_flows.infer.AmortizedFlow`).

The generative model is the usual Bernoulli VAE (Kingma & Welling, "Auto-Encoding Variational
Bayes", ICLR 2014)::

    z ~ N(0, I),    x | z ~ Bernoulli(logits = decoder(z))

and ``q(z | x)`` is either ``N(loc(x), scale(x))`` or that Gaussian pushed through a RealNVP whose
coupling networks also see the encoder's last hidden layer, as in Kingma et al., "Improved
Variational Inference with Inverse Autoregressive Flow" (NeurIPS 2016). Both VAEs start from the
same weights and see the same batches for the same number of epochs. Training binarizes each
batch afresh (``x ~ Bernoulli(pixel intensity)``); the test set is binarized once, with a fixed
seed. Reports the test ELBO and the importance-weighted bound ``IWAE(k)`` (Burda et al., ICLR
2016), whose negative is the test NLL estimate, and writes ``reconstructions.png`` and
``samples.png`` to ``--out``::

    python examples/vae_flow.py --out vae_out                       # Fashion-MNIST, ~1 hour
    python examples/vae_flow.py --data digits --out vae_digits
    python examples/vae_flow.py --smoke --out /tmp/vae              # tiny sizes, under a minute
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from tqdm import tqdm, trange

from pyro_flows.data import load, load_fashion_mnist
from pyro_flows.infer import AmortizedFlow, importance_log_weights, iwae_log_likelihood
from pyro_flows.plots import save_figure

__all__ = ["Sizes", "FULL", "SMOKE", "load_images", "Encoder", "Decoder", "VAE", "train",
           "evaluate", "main"]

POSTERIORS = ("gaussian", "flow")


@dataclass(frozen=True)
class Sizes:
    """Architecture, training and evaluation sizes."""

    latent_dim: int
    hidden_dim: int  # width of the encoder's and the decoder's two hidden layers
    flow_layers: int  # RealNVP couplings
    flow_hidden: int  # width of each coupling's two hidden layers
    epochs: int
    batch_size: int
    lr: float
    elbo_samples: int  # draws per test point for the test ELBO
    iwae_k: int  # importance samples of the IWAE bound
    iwae_points: int  # test points for IWAE(k), a fixed random subset; 0 for all
    train_points: int | None = None  # None: the whole training set


FULL = {
    # 8 couplings: with 4 the flow gained 1.4 nats at most in 200 epochs (benchmarks/RESULTS.md).
    "fashion-mnist": Sizes(latent_dim=32, hidden_dim=256, flow_layers=8, flow_hidden=256,
                           epochs=100, batch_size=128, lr=1e-3, elbo_samples=10, iwae_k=1000,
                           iwae_points=0),
    "digits": Sizes(latent_dim=8, hidden_dim=128, flow_layers=4, flow_hidden=64, epochs=300,
                    batch_size=64, lr=1e-3, elbo_samples=10, iwae_k=1000, iwae_points=0),
}
SMOKE = {
    "fashion-mnist": Sizes(latent_dim=8, hidden_dim=64, flow_layers=2, flow_hidden=32, epochs=1,
                           batch_size=100, lr=1e-3, elbo_samples=2, iwae_k=50, iwae_points=100,
                           train_points=2000),
    "digits": Sizes(latent_dim=4, hidden_dim=64, flow_layers=2, flow_hidden=32, epochs=3,
                    batch_size=64, lr=1e-3, elbo_samples=2, iwae_k=50, iwae_points=100),
}


def load_images(name: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Pixel intensities in ``[0, 1]`` as flat vectors: ``(train, test, (height, width))``.

    Fashion-MNIST keeps its official 60000/10000 split; digits uses
    :func:`pyro_flows.data.load`'s split (training and validation parts train here).
    """
    if name == "fashion-mnist":
        (train, test), top = load_fashion_mnist(), 255.0
    elif name == "digits":
        data = load("digits", seed=seed)
        train, test, top = torch.cat([data.train, data.val]), data.test, data.levels - 1.0
    else:
        raise ValueError(f"unknown data set {name!r}; use 'fashion-mnist' or 'digits'")
    shape = tuple(train.shape[-2:])
    return train.flatten(1) / top, test.flatten(1) / top, shape


class Encoder(nn.Module):
    """``x -> (loc, scale)``, or ``(loc, scale, h)`` with ``h`` the last hidden layer, which a
    flow posterior takes as its context."""

    def __init__(self, data_dim: int, hidden_dim: int, latent_dim: int,
                 return_features: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(data_dim, hidden_dim), nn.Softplus(),
                                  nn.Linear(hidden_dim, hidden_dim), nn.Softplus())
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)
        self.return_features = return_features

    def forward(self, x: torch.Tensor):
        h = self.body(x)
        loc, raw = self.head(h).chunk(2, dim=-1)
        # The floor keeps log q finite when a unit's scale would underflow.
        scale = nn.functional.softplus(raw) + 1e-4
        return (loc, scale, h) if self.return_features else (loc, scale)


class Decoder(nn.Module):
    """``z -> `` Bernoulli logits of every pixel."""

    def __init__(self, latent_dim: int, hidden_dim: int, data_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.Softplus(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.Softplus(),
                                 nn.Linear(hidden_dim, data_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VAE(nn.Module):
    """A Bernoulli VAE whose ``model`` and ``guide`` are Pyro programs over a batch ``x``.

    :param posterior: ``"gaussian"`` (the encoder's diagonal Gaussian) or ``"flow"`` (that
        Gaussian refined by an :class:`AmortizedFlow` conditioned on the encoder's features).
    """

    def __init__(self, data_dim: int, sizes: Sizes, posterior: str) -> None:
        super().__init__()
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
        self.latent_dim = sizes.latent_dim
        flow = posterior == "flow"
        self.encoder = Encoder(data_dim, sizes.hidden_dim, sizes.latent_dim,
                               return_features=flow)
        self.decoder = Decoder(sizes.latent_dim, sizes.hidden_dim, data_dim)
        # The flow draws its initialization from its own fixed seed, so both posteriors start
        # from the same encoder and decoder weights given the same global seed.
        self.flow = AmortizedFlow(self.encoder, sizes.latent_dim, "realnvp",
                                  num_layers=sizes.flow_layers,
                                  hidden_dims=(sizes.flow_hidden,) * 2,
                                  context_dim=sizes.hidden_dim) if flow else None

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """``q(z | x)``, batch shape ``x.shape[:-1]``."""
        if self.flow is not None:
            return self.flow(x)
        loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        prior = dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("posterior", self.flow if self.flow is not None else self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x))


def train(vae: VAE, probs: torch.Tensor, sizes: Sizes, seed: int, desc: str,
          on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """SVI with Adam on a cleared param store; every batch is binarized afresh. Returns the
    training ELBO per epoch (nats per image). The batch order depends on ``seed`` alone.
    ``on_epoch(epoch, elbo)`` runs after each epoch (from 1)."""
    pyro.clear_param_store()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": sizes.lr}), Trace_ELBO())
    order = torch.Generator().manual_seed(seed)
    history = []
    epochs = trange(sizes.epochs, desc=desc)
    for _ in epochs:
        total = 0.0
        batches = torch.randperm(len(probs), generator=order).split(sizes.batch_size)
        for idx in tqdm(batches, desc="epoch", leave=False):
            total += svi.step(torch.bernoulli(probs[idx]))
        history.append(-total / len(probs))
        epochs.set_postfix(elbo=f"{history[-1]:.2f}")
        if on_epoch is not None:
            on_epoch(len(history), history[-1])
    return history


def binarized_test_set(test_probs: torch.Tensor, seed: int,
                       points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images binarized once with ``seed``, and the sorted indices of the fixed random
    subset of ``points`` images (all for 0) that IWAE(k) runs on."""
    fixed = torch.Generator().manual_seed(seed)
    test = torch.bernoulli(test_probs, generator=fixed)
    index = torch.randperm(len(test), generator=fixed)[: points or len(test)]
    return test, index.sort().values


@torch.no_grad()
def evaluate(vae: VAE, x: torch.Tensor, iwae_index: torch.Tensor, sizes: Sizes,
             chunk: int = 50) -> dict[str, torch.Tensor]:
    """Per-image test ELBO on all of ``x`` and IWAE(k) on ``x[iwae_index]``, in nats.

    The ELBO is the mean of ``elbo_samples`` single-draw log-weights per image; IWAE(k) is
    :func:`~pyro_flows.infer.iwae_log_likelihood` per data point, ``k`` draws per image.
    """
    elbo = [importance_log_weights(vae.model, vae.guide, part, num_samples=sizes.elbo_samples,
                                   per_datapoint_plate="data").mean(0)
            for part in x.split(500)]
    # 50 images x 200 draws per batched run keep the decoder's output near 30 MB.
    draws = max(1, min(sizes.iwae_k, 10_000 // chunk))
    iwae = [iwae_log_likelihood(vae.model, vae.guide, part, num_samples=sizes.iwae_k,
                                batch_size=draws, per_datapoint_plate="data")
            for part in tqdm(x[iwae_index].split(chunk), desc=f"IWAE({sizes.iwae_k})",
                             leave=False)]
    return {"elbo": torch.cat(elbo), "iwae": torch.cat(iwae)}


def _tile(images: torch.Tensor, cols: int, shape: tuple[int, int]) -> np.ndarray:
    """``(n, H*W)`` images in ``[0, 1]`` tiled ``cols`` wide, with one-pixel gaps of NaN."""
    h, w = shape
    rows = math.ceil(len(images) / cols)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1), np.nan)
    for i, image in enumerate(images.reshape(-1, h, w).cpu().numpy()):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1): (r + 1) * (h + 1), 1 + c * (w + 1): (c + 1) * (w + 1)] = image
    return grid


def _show(ax, grid: np.ndarray, title: str) -> None:
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="#9ab")  # ink dark, gaps blue-grey
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=12, loc="left")
    ax.set_axis_off()


@torch.no_grad()
def _pictures(vaes: dict[str, VAE], x: torch.Tensor, shape: tuple[int, int], out: Path,
              nll: dict[str, float]) -> list[Path]:
    cols = 12
    fig, axes = plt.subplots(3, 1, figsize=(cols * 0.9, 3 * 1.3))
    _show(axes[0], _tile(x[:cols], cols, shape), "test images (binarized)")
    for ax, (name, vae) in zip(axes[1:], vaes.items()):
        means = torch.sigmoid(vae.decoder(vae.posterior(x[:cols]).sample()))
        _show(ax, _tile(means, cols, shape), f"{name} posterior: decoder mean at z ~ q(z | x)")
    fig.tight_layout()
    paths = [save_figure(fig, out / "reconstructions.png")]

    side = 8
    fig, axes = plt.subplots(1, len(vaes), figsize=(5 * len(vaes), 5.4))
    z = torch.randn(side * side, next(iter(vaes.values())).latent_dim)
    for ax, (name, vae) in zip(axes, vaes.items()):
        means = torch.sigmoid(vae.decoder(z.to(x)))  # the same z for both decoders
        _show(ax, _tile(means, side, shape), f"samples, {name} posterior: decoder mean at "
              f"z ~ N(0, I)\nIWAE test NLL {nll[name]:.2f} nats")
    fig.tight_layout()
    paths.append(save_figure(fig, out / "samples.png"))
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train both VAEs and compare them; returns ``{"elbo": {posterior: nats}, "nll":
    {posterior: nats}, "nll_gain": nats, "nll_gain_se": nats, "iwae_minus_elbo": {posterior:
    nats}, "history": {posterior: [elbo]}, "figures": [paths], "seconds": {posterior: s},
    "sizes": Sizes}``, all per test image."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--data", choices=sorted(FULL), default="fashion-mnist")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--out", default="vae_out", help="directory for the PNGs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the epochs of the chosen sizes")
    parser.add_argument("--iwae-points", type=int,
                        help="test images for IWAE(k), 0 for all (default by size)")
    # Small matrices: one thread skips OpenMP's synchronization, which costs more than it
    # saves when other jobs share the cores.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = (SMOKE if args.smoke else FULL)[args.data]
    if args.epochs is not None:
        sizes = replace(sizes, epochs=args.epochs)
    if args.iwae_points is not None:
        sizes = replace(sizes, iwae_points=args.iwae_points)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        train_probs, test_probs, shape = load_images(args.data, seed=args.seed)
        if sizes.train_points is not None:
            train_probs = train_probs[: sizes.train_points]
        test, iwae_index = binarized_test_set(test_probs, args.seed, sizes.iwae_points)
        print(f"{args.data}: {len(train_probs)} training images, {len(test)} test images "
              f"(IWAE({sizes.iwae_k}) on {len(iwae_index)} of them)")

        vaes, results, history, seconds = {}, {}, {}, {}
        for name in POSTERIORS:
            pyro.set_rng_seed(args.seed)
            vaes[name] = vae = VAE(train_probs.shape[1], sizes, name)
            start = time.perf_counter()
            history[name] = train(vae, train_probs, sizes, args.seed, desc=f"{name} VAE")
            seconds[name] = time.perf_counter() - start
            pyro.set_rng_seed(args.seed + 1)
            start = time.perf_counter()
            results[name] = evaluate(vae, test, iwae_index, sizes)
            r = results[name]
            tighter = (r["iwae"] - r["elbo"][iwae_index]).mean()
            print(f"{name:8s} posterior: test ELBO {r['elbo'].mean():8.2f}   IWAE({sizes.iwae_k}) "
                  f"test NLL {-r['iwae'].mean():8.2f} (a bound {tighter:.2f} nats tighter than "
                  f"the ELBO on the same images)   train {seconds[name]:.0f} s, evaluation "
                  f"{time.perf_counter() - start:.0f} s")

        elbo = {k: float(r["elbo"].mean()) for k, r in results.items()}
        # How much IWAE(k) tightens the ELBO, on the images both were computed on.
        tighter = {k: float((r["iwae"] - r["elbo"][iwae_index]).mean())
                   for k, r in results.items()}
        nll = {k: float(-r["iwae"].mean()) for k, r in results.items()}
        # Paired over the same test images, so the error of the gain is that of the per-image
        # differences, much smaller than either NLL's spread.
        diff = results["flow"]["iwae"] - results["gaussian"]["iwae"]
        gain, gain_se = float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))
        print(f"the flow posterior improves the ELBO by {elbo['flow'] - elbo['gaussian']:.2f} "
              f"and the IWAE({sizes.iwae_k}) test NLL by {gain:.2f} +- {gain_se:.2f} nats"
              + (" (smoke sizes: too little training for these to mean anything)"
                 if args.smoke else ""))
        figures = _pictures(vaes, test, shape, out, nll)
        print("pictures written to " + ", ".join(map(str, figures)))
    finally:
        torch.set_num_threads(threads)
    return {"elbo": elbo, "nll": nll, "nll_gain": gain, "nll_gain_se": gain_se,
            "iwae_minus_elbo": tighter,
            "history": history, "figures": figures, "seconds": seconds, "sizes": sizes}


if __name__ == "__main__":
    main()
