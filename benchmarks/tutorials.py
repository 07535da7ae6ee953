"""Pyro's ``svi_flow_guide`` tutorial, side by side: the zuko route it teaches
(``zuko.flows.NSF`` inverted into an IAF, through ``pyro.contrib.zuko.ZukoToPyro``) and the
same amortized guide with a pyro-flows conditional flow, at the same steps and particles.

    python benchmarks/tutorials.py [--steps 4096] [--flow conditional_realnvp] [--seed 0]
                                   [--sizes 4x256,4x128] [--threads 1]

The model, data, optimizer (``ClippedAdam``, lr 1e-3, clip norm 10), particles (16, vectorized)
and step count are the tutorial's; both guides have two hidden layers of 256. The pyro-flows
guide is ``N(0, I)`` pushed through the registry's conditional flow conditioned on the same
10-dimensional context as zuko's (the 5 observations of a data point); ``--sizes`` lists its
``couplings x width`` variants (default: 4 couplings of 256, the flow's default depth at zuko's
width, and 4 of 128, about the multiply-adds of zuko's one autoregressive network of 256).
Reported per route: the final ELBO (``-loss`` of ``Trace_ELBO`` with 1024
vectorized particles on the training data, after training) and the median wall time per step.
Ratios are pyro-flows / zuko from the one run.

Needs the ``bench`` extra (zuko).
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

import pyro_flows

PRIOR_DIM, OBS, POINTS, CONTEXT = 3, 5, 64, 10


def likelihood(z: torch.Tensor) -> dist.MultivariateNormal:
    mu = z[..., :2]
    rho = z[..., 2].tanh() * 0.99
    one = torch.ones_like(rho)
    cov = 1e-2 * torch.stack([one, rho, rho, one], dim=-1).unflatten(-1, (2, 2))
    return dist.MultivariateNormal(mu, cov)


def prior() -> dist.Distribution:
    return dist.Normal(torch.zeros(PRIOR_DIM), torch.ones(PRIOR_DIM)).to_event(1)


def model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[1]):
        z = pyro.sample("z", prior())
        with pyro.plate("obs", OBS):
            pyro.sample("x", likelihood(z), obs=x)


def context(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(0, 1).flatten(-2)  # (points, 5 * 2)


def zuko_guide():
    import zuko
    from pyro.contrib.zuko import ZukoToPyro

    flow = zuko.flows.NSF(features=PRIOR_DIM, context=CONTEXT, transforms=1,
                          hidden_features=(256, 256))
    flow.transform = flow.transform.inv  # the tutorial's IAF: fast to sample from

    def guide(x: torch.Tensor) -> None:
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[1]):
            pyro.sample("z", ZukoToPyro(flow(context(x))))

    return guide


def pyro_flows_guide(name: str, num_layers: int = 4, hidden: int = 256):
    flow = pyro_flows.build(name, event_shape=(PRIOR_DIM,), context_dim=CONTEXT,
                            num_layers=num_layers, hidden_dims=(hidden, hidden))

    def guide(x: torch.Tensor) -> None:
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[1]):
            base = dist.Normal(torch.zeros(PRIOR_DIM), 1.0).to_event(1)
            pyro.sample("z", dist.ConditionalTransformedDistribution(base, [flow])
                        .condition(context(x)))

    return guide


def run(guide, x: torch.Tensor, steps: int, seed: int) -> tuple[float, float]:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, ClippedAdam({"lr": 1e-3, "clip_norm": 10.0}),
              Trace_ELBO(num_particles=16, vectorize_particles=True))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        svi.step(x)
        times.append(time.perf_counter() - start)
    pyro.set_rng_seed(seed + 1)
    with torch.no_grad():
        loss = Trace_ELBO(num_particles=1024, vectorize_particles=True).loss(model, guide, x)
    return -loss, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--flow", default="conditional_realnvp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default="4x256,4x128",
                        help="comma-separated 'couplings x width' of the pyro-flows guides")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    z_star = prior().sample((POINTS,))
    x_star = likelihood(z_star).sample((OBS,))
    routes = [("zuko NSF via ZukoToPyro", zuko_guide())]
    for size in args.sizes.split(","):
        layers, width = map(int, size.split("x"))
        routes.append((f"pyro-flows {args.flow} {layers}x{width}",
                       pyro_flows_guide(args.flow, layers, width)))
    results = {}
    for route, guide in routes:
        results[route] = run(guide, x_star, args.steps, args.seed)
        elbo, step = results[route]
        print(f"{route:44s} final ELBO {elbo:10.2f}   {1e3 * step:7.2f} ms/step", flush=True)
    z_elbo, z_step = results[routes[0][0]]
    for route, (elbo, step) in list(results.items())[1:]:
        print(f"{route}: ELBO {elbo - z_elbo:+.2f} nats vs zuko, time per step "
              f"{step / z_step:.2f}x zuko's")


if __name__ == "__main__":
    main()
