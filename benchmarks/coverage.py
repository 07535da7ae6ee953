"""Do flow guides cover curved posteriors? Default ``AutoFlow`` against Pyro's ``AutoIAFNormal``
and ``AutoNormalizingFlow`` (and ``AutoNormal`` as the floor) on 2-D targets with known moments.

    python benchmarks/coverage.py [--steps 3000] [--lr 0.01] [--particles 8] [--clip 1.0]
                                  [--lr-final 0.1] [--adam] [--seeds 0,1,2,3]
                                  [--targets banana,ring,mixture] [--guides NAMES]
                                  [--autoflow '{"num_layers": 4}'] [--threads 1]

Targets (the "posterior" is the model's own joint over ``(z1, z2)``, no data):

* ``banana``: ``z1 ~ N(0, 1)``, ``z2 | z1 ~ N(B (z1^2 - 1), S^2)``; means 0, sd(z1) = 1,
  sd(z2) = sqrt(2 B^2 + S^2) in closed form.
* ``ring``: density ``exp(-(|z| - R)^2 / (2 W^2))``; means 0 and sd by grid quadrature.
* ``mixture``: ``0.5 N((-M, 0), V^2 I) + 0.5 N((M, 0), V^2 I)``; means 0,
  sd(z1) = sqrt(M^2 + V^2), sd(z2) = V in closed form.

The default budget is the training the getting-started page recommends for flow guides: 3,000
steps of Pyro's ``ClippedAdam`` at ``--lr`` with every gradient entry clamped to
``[-CLIP, CLIP]`` and the rate decaying geometrically to ``LR_FINAL * lr`` over the run, on
``Trace_ELBO`` with ``--particles`` vectorized draws. ``--adam`` trains with plain Adam instead
(no clamp, no decay), e.g. ``--adam --particles 1`` for Pyro's usual one-draw SVI. Every guide
trains under the same settings; its means and sds come from 20000 draws. The target is every
marginal sd within 15% and every mean within 0.15 sd. Printed per target, seed and guide: the
worst relative sd error, the worst mean error in sds, and PASS/FAIL; then each guide's passes.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import affine_coupling, permute
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal, AutoNormalizingFlow

from pyro_flows.infer import AutoFlow

B, S = 0.8, 0.4  # banana
R, W = 2.0, 0.3  # ring
M, V = 1.2, 0.6  # mixture


def banana() -> None:
    z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
    pyro.sample("z2", dist.Normal(B * (z1**2 - 1), S))


def _joint(log_density: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
    def model() -> None:
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 10.0).to_event(1))
        # The wide prior is divided out, leaving exactly the target density.
        pyro.factor("target", log_density(z) - dist.Normal(0.0, 10.0).log_prob(z).sum(-1))
    return model


def ring_log_density(z: torch.Tensor) -> torch.Tensor:
    return -((z.norm(dim=-1) - R) ** 2) / (2 * W**2)


def mixture_log_density(z: torch.Tensor) -> torch.Tensor:
    parts = [dist.Normal(torch.tensor([c, 0.0]), V).log_prob(z).sum(-1) for c in (-M, M)]
    return torch.logsumexp(torch.stack(parts), 0) - math.log(2)


def grid_moments(log_density: Callable[[torch.Tensor], torch.Tensor], half: float = 6.0,
                 n: int = 1201) -> tuple[torch.Tensor, torch.Tensor]:
    axis = torch.linspace(-half, half, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    w = torch.softmax(log_density(grid).reshape(-1), 0)
    mean = (w[:, None] * grid).sum(0)
    sd = ((w[:, None] * (grid - mean) ** 2).sum(0)).sqrt()
    return mean.float(), sd.float()


TARGETS = {
    "banana": (banana, torch.zeros(2), torch.tensor([1.0, math.sqrt(2 * B**2 + S**2)])),
    "ring": (_joint(ring_log_density), *grid_moments(ring_log_density)),
    "mixture": (_joint(mixture_log_density), torch.zeros(2),
                torch.tensor([math.sqrt(M**2 + V**2), V])),
}


def guides(autoflow_kwargs: dict) -> dict[str, Callable]:
    def realnvp_flow(dim: int):
        # Pyro's own flow guide: affine couplings with permutations, as in its tutorial.
        return dist.transforms.ComposeTransformModule([
            t for i in range(4)
            for t in (affine_coupling(dim), permute(dim, torch.tensor([1, 0])))][:-1])

    return {
        "AutoNormal": AutoNormal,
        "AutoIAFNormal": AutoIAFNormal,
        "AutoNormalizingFlow(4 affine)": lambda m: AutoNormalizingFlow(m, realnvp_flow),
        "AutoFlow (default)": lambda m: AutoFlow(m, **autoflow_kwargs),
    }


def draws(model: Callable, guide, n: int) -> torch.Tensor:
    with torch.no_grad(), pyro.plate("draws", n, dim=-1):
        sample = guide()
    if "z" in sample:
        return sample["z"].reshape(n, 2)
    return torch.stack([sample["z1"].reshape(n), sample["z2"].reshape(n)], -1)


def optimizer(lr: float, steps: int, clip: float | None, lr_final: float):
    """Plain Adam when ``clip`` is None; else ``ClippedAdam`` clamping every gradient entry to
    ``[-clip, clip]``, its rate decaying geometrically to ``lr_final * lr`` over ``steps``."""
    if clip is None:
        return pyro.optim.Adam({"lr": lr})
    return pyro.optim.ClippedAdam({"lr": lr, "clip_norm": clip, "lrd": lr_final ** (1 / steps)})


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def evaluate(model: Callable, make_guide: Callable, steps: int, lr: float, particles: int,
             seed: int, clip: float | None = None,
             lr_final: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = make_guide(model)
    svi = SVI(model, guide, optimizer(lr, steps, clip, lr_final),
              Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1))
    for _ in range(steps):
        svi.step()
    z = draws(model, guide, 20000)
    return z.mean(0), z.std(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=positive, default=0.01)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--clip", type=positive, default=1.0,
                        help="ClippedAdam: clamp every gradient entry to [-CLIP, CLIP]")
    parser.add_argument("--lr-final", type=positive, default=0.1,
                        help="ClippedAdam: decay the learning rate to LR_FINAL * lr over the run")
    parser.add_argument("--adam", action="store_true",
                        help="plain Adam: no clamp and no decay (--clip, --lr-final ignored)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2,3")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--guides", default=None, help="comma-separated subset of the guides")
    parser.add_argument("--autoflow", type=json.loads, default={},
                        help="JSON keyword arguments for AutoFlow (a sweep away from its defaults)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = guides(args.autoflow)
    if args.guides:
        unknown = set(args.guides.split(",")) - set(chosen)
        if unknown:
            parser.error(f"unknown guides {sorted(unknown)}; choose from {list(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.guides.split(",")}
    unknown = set(args.targets.split(",")) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {list(TARGETS)}")
    clip = None if args.adam else args.clip
    optim = "Adam" if args.adam else (f"ClippedAdam (gradient entries clamped to {clip}, lr "
                                      f"decaying to {args.lr_final} of it)")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.steps} steps, {optim} lr {args.lr}, {args.particles} particle(s), seeds "
          f"{seeds}, AutoFlow arguments {args.autoflow}")
    passes = {(target, name): 0 for target in args.targets.split(",") for name in chosen}
    for target in args.targets.split(","):
        model, mean, sd = TARGETS[target]
        print(f"{target}: true mean {mean.tolist()}, sd {[round(s, 3) for s in sd.tolist()]}")
        for seed in seeds:
            for name, make in chosen.items():
                m, s = evaluate(model, make, args.steps, args.lr, args.particles, seed, clip,
                                args.lr_final)
                sd_err = ((s - sd) / sd).abs().max().item()
                mean_err = ((m - mean) / sd).abs().max().item()
                passed = sd_err <= 0.15 and mean_err <= 0.15
                passes[target, name] += passed
                print(f"  seed {seed} {name:30s} sd {[round(x, 3) for x in s.tolist()]}  worst sd "
                      f"error {100 * sd_err:5.1f}%  worst mean error {mean_err:.3f} sd  "
                      f"{'PASS' if passed else 'FAIL'}", flush=True)
    print(f"passes out of {len(seeds)} seed(s):")
    for name in chosen:
        cells = ", ".join(f"{t} {passes[t, name]}" for t in args.targets.split(","))
        print(f"  {name:30s} {cells}")


if __name__ == "__main__":
    main()
