"""A short digits Glow fit on each device and precision given, from the same seed and data
order, and the test NLL of each against the CPU fp32 figure (``benchmarks/gpu_check.sh``).

    python benchmarks/gpu_fit_check.py --devices cpu,cuda --precisions fp32,bf16-mixed \
        [--epochs 3] [--train 1400] [--tolerance 0.01] [--json out.json]

Exit status 1 when a run's test NLL is further than ``--tolerance`` (relative) from CPU fp32's.
Training runs ``fit(..., precision=...)``; the test NLL is scored under the same
``pyro_flows.precision.autocast``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import pyro_flows
from pyro_flows import FlowModel
from pyro_flows.precision import autocast


def run(device: str, precision: str, epochs: int, n_train: int) -> dict:
    images = pyro_flows.data.load_digits_images()
    images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))]
    train, test = images[:n_train].to(device), images[1400:].to(device)
    torch.manual_seed(0)
    model = FlowModel.build("glow", (1, 8, 8), data_levels=17, levels=2, steps=4,
                            hidden_channels=64).to(device)
    pyro_flows.initialize(model, train[:256])
    t0 = time.perf_counter()
    pyro_flows.fit(model, train, epochs=epochs, batch_size=64, lr=3e-3, warmup_steps=10,
                   progress=False, seed=0, precision=precision)
    seconds = time.perf_counter() - t0
    torch.manual_seed(1)  # the same dequantization noise for every run
    with torch.no_grad(), autocast(precision, device):
        nll = -model.log_prob(test).mean().item()
    return {"device": device, "precision": precision, "test_nll": nll, "fit_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--precisions", default="fp32,bf16-mixed")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train", type=int, default=1400, help="training images (at most 1400)")
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--json")
    args = p.parse_args(argv)
    runs = [run(d, q, args.epochs, args.train) for d in args.devices.split(",")
            for q in args.precisions.split(",")]
    reference = runs[0]["test_nll"]  # the first device and precision: cpu, fp32
    ok = True
    for r in runs:
        r["relative_to_first"] = (r["test_nll"] - reference) / abs(reference)
        r["within_tolerance"] = abs(r["relative_to_first"]) <= args.tolerance
        ok &= r["within_tolerance"]
        print(f"{r['device']:5s} {r['precision']:11s} test NLL {r['test_nll']:.4f} nats "
              f"({100 * r['relative_to_first']:+.3f} % vs {runs[0]['device']} "
              f"{runs[0]['precision']}), fit {r['fit_seconds']:.1f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    print("digits fit check:", "OK" if ok else f"FAILED (tolerance {args.tolerance:.1%})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
