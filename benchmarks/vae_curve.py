"""The VAE target's gain against training length: trains one posterior of
``examples/vae_flow.py`` (Fashion-MNIST, full sizes) and evaluates it at chosen epochs without
touching the training RNG stream, so the figures at epoch N are those of an N-epoch run of the
example (same weights, batches and binarizations; checked: 100 epochs reproduce the example's
test NLL to the printed digit). Run one process per posterior, then compare::

    python benchmarks/vae_curve.py gaussian --epochs 200 --at 50,100,150,200 --out curve
    python benchmarks/vae_curve.py flow --flow-layers 8 --epochs 100 --at 50,100 --out curve
    python benchmarks/vae_curve.py compare curve/gaussian.json curve/flow8.json

IWAE(1000) runs on a fixed random subset of ``--iwae-points`` test images (0: all 10000);
``compare`` pairs the two runs image by image at every epoch both evaluated.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pyro
import torch

from pyro_flows.checkpoint import save_json
from vi import load_example


def train(args: argparse.Namespace) -> None:
    vf = load_example("vae_flow")
    seed, marks = args.seed, {int(m) for m in args.at.split(",")}
    sizes = replace(vf.FULL["fashion-mnist"], epochs=args.epochs, iwae_points=args.iwae_points,
                    **({"flow_layers": args.flow_layers} if args.flow_layers else {}))
    train_probs, test_probs, _ = vf.load_images("fashion-mnist", seed=seed)
    test, iwae_index = vf.binarized_test_set(test_probs, seed, sizes.iwae_points)
    label = args.posterior + (str(sizes.flow_layers) if args.posterior == "flow" else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = []

    def on_epoch(epoch: int, elbo: float) -> None:
        record = {"epoch": epoch, "train_elbo": elbo}
        if epoch in marks:
            rng = torch.random.get_rng_state()
            pyro.set_rng_seed(seed + 1)  # as the example does before evaluating
            result = vf.evaluate(vae, test, iwae_index, sizes)
            torch.random.set_rng_state(rng)
            record.update(test_elbo=float(result["elbo"].mean()), iwae=result["iwae"].tolist(),
                          nll=float(-result["iwae"].mean()))
            print(f"{label} epoch {epoch}: test ELBO {record['test_elbo']:.2f}, "
                  f"IWAE({sizes.iwae_k}) NLL {record['nll']:.2f}", flush=True)
        log.append(record)
        save_json(log, out / f"{label}.json")

    pyro.set_rng_seed(seed)  # as the example does before building each VAE
    vae = vf.VAE(train_probs.shape[1], sizes, args.posterior)
    vf.train(vae, train_probs, sizes, seed, desc=f"{label} VAE", on_epoch=on_epoch)


def compare(gaussian: str, flow: str) -> None:
    evaluated = {r["epoch"]: r for r in json.loads(Path(gaussian).read_text()) if "iwae" in r}
    for r in json.loads(Path(flow).read_text()):
        if "iwae" in r and r["epoch"] in evaluated:
            g = evaluated[r["epoch"]]
            diff = torch.tensor(r["iwae"]) - torch.tensor(g["iwae"])
            print(f"epoch {r['epoch']}: NLL {g['nll']:.2f} (Gaussian) {r['nll']:.2f} (flow), "
                  f"gain {diff.mean():.2f} +- {diff.std() / math.sqrt(len(diff)):.2f} nats")


def main() -> None:
    if sys.argv[1:2] == ["compare"]:
        compare(*sys.argv[2:4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("posterior", choices=["gaussian", "flow"])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--at", default="50,100", help="epochs to evaluate at")
    parser.add_argument("--flow-layers", type=int, help="couplings (default: the example's)")
    parser.add_argument("--iwae-points", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="vae_curve")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train(args)


if __name__ == "__main__":
    main()
