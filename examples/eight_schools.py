"""Eight schools, non-centred: a diagonal Gaussian guide (``AutoNormal``) and a RealNVP flow guide
(``AutoFlow``) against NUTS.

Rubin's coaching experiment (Rubin, "Estimation in parallel randomized experiments", 1981; Gelman
et al., *Bayesian Data Analysis*, section 5.5): eight schools report an effect ``y_j`` with a known
standard error ``sigma_j``. The hierarchical model, written non-centred so that NUTS samples it
without divergences::

    mu ~ N(0, 5),   tau ~ HalfCauchy(5),   theta_tilde_j ~ N(0, 1),
    y_j ~ N(mu + tau * theta_tilde_j, sigma_j)

The posterior of ``tau`` is skewed with a long right tail, and ``mu`` is correlated with it; a
Gaussian guide in the unconstrained space (``log tau``) is too narrow there. Prints Pareto k-hat
for both guides and their means and standard deviations against NUTS; writes
``eight_schools_pairs.png`` to ``--out``::

    python examples/eight_schools.py --out eight_schools_out
    python examples/eight_schools.py --smoke --out /tmp/eight     # tiny sizes, under a minute
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import arviz
import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from tqdm import trange

from pyro_flows.diagnostics import compare_with_mcmc, psis_khat, to_inference_data
from pyro_flows.infer import AutoFlow
from pyro_flows.plots import save_figure

__all__ = ["Sizes", "FULL", "SMOKE", "Y", "SIGMA", "eight_schools", "fit", "main"]

#: Estimated coaching effects and their standard errors (BDA3, table 5.2).
Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


@dataclass(frozen=True)
class Sizes:
    """How long each method runs."""

    normal_steps: int
    flow_steps: int
    particles: int  # ELBO particles per step, vectorized
    num_layers: int  # couplings of the RealNVP guide
    draws: int  # guide draws for k-hat and the moments
    nuts_warmup: int
    nuts_samples: int


FULL = Sizes(normal_steps=3000, flow_steps=4000, particles=32, num_layers=8, draws=20_000,
             nuts_warmup=1000, nuts_samples=5000)
SMOKE = Sizes(normal_steps=150, flow_steps=150, particles=4, num_layers=2, draws=1000,
              nuts_warmup=100, nuts_samples=100)


def eight_schools(y: torch.Tensor = Y, sigma: torch.Tensor = SIGMA) -> None:
    """The non-centred hierarchical model; ``theta = mu + tau * theta_tilde``."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(y)):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def fit(model: Callable, guide: Callable, steps: int, particles: int, lr: float,
        max_plate_nesting: int, desc: str) -> list[float]:
    """Trace_ELBO with clipped Adam, the learning rate decaying tenfold over the run."""
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / steps), "clip_norm": 10.0})
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True,
                      max_plate_nesting=max_plate_nesting)
    svi = SVI(model, guide, optim, elbo)
    losses = []
    bar = trange(steps, desc=desc, leave=False)
    for step in bar:
        losses.append(svi.step())
        if step % 100 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.3f}")
    return losses


def _pair_plot(panels: dict[str, arviz.InferenceData], khats: dict[str, float],
               path: Path) -> Path:
    pairs = [("mu", None), ("theta_tilde", 0)]
    fig, axes = plt.subplots(len(pairs), len(panels), figsize=(4.2 * len(panels), 8.2),
                             sharey=True)
    for col, (name, idata) in enumerate(panels.items()):
        thinned = idata.posterior.isel(draw=slice(0, 3000))
        for row, (var, index) in enumerate(pairs):
            ax = axes[row, col]
            coords = {} if index is None else {"school": [index]}
            arviz.plot_pair(thinned, var_names=[var, "tau"], coords=coords, ax=ax,
                            scatter_kwargs={"marker": "o", "s": 5, "alpha": 0.3})
            # tau's long right tail and its pile-up near 0 both show on a log axis.
            ax.set_yscale("log")
            ax.set_ylim(0.02, 60)
            ax.set_xlim(*((-10, 20) if var == "mu" else (-3.5, 3.5)))
            ax.set_xlabel(var if index is None else f"{var}[{index}]", fontsize=12)
            ax.set_ylabel("tau (log scale)" if col == 0 else "", fontsize=12)
            ax.tick_params(labelsize=10)
            if row == 0:
                title = name if name not in khats else f"{name}   (k-hat = {khats[name]:.2f})"
                ax.set_title(title, fontsize=13)
    fig.suptitle("Eight schools (non-centred): tau against mu and theta_tilde[0]", fontsize=14)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns ``{"khat": {guide: k}, "table": DataFrame indexed by
    (method, parameter), "figure": path, "divergences": int, "seconds": {method: s}}``."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--out", default="eight_schools_out", help="directory for the PNG")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flow-steps", type=int, help="AutoFlow's SVI steps (default by size)")
    # The model is tiny: one thread skips OpenMP's synchronization, which otherwise costs more
    # than the arithmetic (and much more when other jobs share the cores).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    flow_steps = args.flow_steps or sizes.flow_steps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        seconds: dict[str, float] = {}
        pyro.set_rng_seed(args.seed)
        start = time.perf_counter()
        mcmc = MCMC(NUTS(eight_schools, jit_compile=True, ignore_jit_warnings=True),
                    num_samples=sizes.nuts_samples, warmup_steps=sizes.nuts_warmup)
        mcmc.run()
        seconds["NUTS"] = time.perf_counter() - start
        divergences = sum(len(d) for d in mcmc.diagnostics()["divergences"].values())
        reference = arviz.from_dict(
            posterior={k: v.numpy() for k, v in mcmc.get_samples(group_by_chain=True).items()},
            dims={"theta_tilde": ["school"]}, coords={"school": np.arange(len(Y))})
        print(f"NUTS        {divergences} divergent transitions of {sizes.nuts_samples}   "
              f"({seconds['NUTS']:.0f} s)")

        guides = {
            "AutoNormal": (lambda: AutoNormal(eight_schools, init_scale=1.0), sizes.normal_steps),
            "AutoFlow": (lambda: AutoFlow(eight_schools, "realnvp", num_layers=sizes.num_layers,
                                          init_scale=1.0), flow_steps),
        }
        khats: dict[str, float] = {}
        posteriors: dict[str, arviz.InferenceData] = {"NUTS": reference}
        for name, (make, steps) in guides.items():
            pyro.clear_param_store()
            pyro.set_rng_seed(args.seed)
            start = time.perf_counter()
            guide = make()
            losses = fit(eight_schools, guide, steps, sizes.particles, lr=3e-3,
                         max_plate_nesting=1, desc=name)
            seconds[name] = time.perf_counter() - start
            khats[name] = psis_khat(eight_schools, guide, num_samples=sizes.draws,
                                    batch_size=5000)
            posteriors[name] = to_inference_data(eight_schools, guide, num_samples=sizes.draws,
                                                 batch_size=5000)
            print(f"{name:10s}  final loss {np.mean(losses[-100:]):7.3f}   "
                  f"k-hat {khats[name]:.2f}   ({seconds[name]:.0f} s)")

        table = pd.concat({name: compare_with_mcmc(posteriors[name], reference)
                           for name in guides}, names=["method"])
        with pd.option_context("display.width", 120, "display.max_columns", None,
                               "display.float_format", "{:.3f}".format):
            print("\nMoments against NUTS (std_mean_error = (mean - mean_mcmc) / sd_mcmc):\n"
                  + str(table))
        for name in guides:
            rows = table.loc[name]
            print(f"{name:10s}  worst |sd_ratio - 1| = {(rows.sd_ratio - 1).abs().max():.3f}   "
                  f"worst |std_mean_error| = {rows.std_mean_error.abs().max():.3f}")
        if max(khats.values()) > 0.7:
            # k-hat reads the tail of the importance weights over all ten dimensions jointly;
            # the table reads each parameter's first two moments.
            print("k-hat above 0.7: importance-weighted estimates from that guide are unreliable; "
                  "its moments may still match NUTS (the table above says whether they do)")
        figure = _pair_plot(posteriors, khats, out / "eight_schools_pairs.png")
        print(f"\npair plot written to {figure}")
    finally:
        torch.set_num_threads(threads)
    return {"khat": khats, "table": table, "figure": figure, "divergences": divergences,
            "seconds": seconds}


if __name__ == "__main__":
    main()
