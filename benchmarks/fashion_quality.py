"""Fashion-MNIST at the issue's fixed budget: Glow L=2, K=8, 128 hidden channels, batch 64,
1,440 Adam steps, judged on the 10,000 test images. Settings: ``baseline`` (the old defaults),
``best`` (the digits ablation's best: variational dequantization, logit alpha 0.01, lr 2e-3,
weight averaging) and ``uniform-tuned`` (the same without the dequantizer's parameters).

    OMP_NUM_THREADS=1 python benchmarks/fashion_quality.py --setting uniform-tuned \
        [--precision bf16-mixed] [--importance 16] [--figures benchmarks/figures] --json out.jsonl

Each run trains on the first 46,080 training images for 2 epochs (exactly 1,440 steps of 64)
with :func:`pyro_flows.fit` and reports the test bits/dim of the dequantization bound (the
mean of 2 noise draws), the importance-weighted estimate over ``--importance`` draws, a
learning curve (after each epoch, on ``--curve-images`` test images), the parameter count
(flow, and dequantizer apart) and the wall time; ``--figures`` writes sample grids.
Needs Debian's ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import pyro_flows
from pyro_flows import FlowModel, plots

SETTINGS = {
    "baseline": {"model": {"dequantization": "uniform", "logit_alpha": 0.05},
                 "lr": 1e-3, "ema_decay": None},
    "best": {"model": {"dequantization": "variational", "logit_alpha": 0.01,
                       "dequantizer": {"hidden_dims": (64, 64)}},
             "lr": 2e-3, "ema_decay": 0.999},
    # the same flow and budget as "best" without the dequantizer's parameters
    "uniform-tuned": {"model": {"dequantization": "uniform", "logit_alpha": 0.01},
                      "lr": 2e-3, "ema_decay": 0.999},
}


@torch.no_grad()
def test_bits_per_dim(model: FlowModel, test: torch.Tensor, draws: int = 2) -> float:
    """The dequantization bound in bits/dim, averaged over ``draws`` noise draws."""
    model.eval()
    total = 0.0
    for seed in range(draws):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            total += sum(model.bits_per_dim(x).sum().item() for x in test.split(500))
    model.train()
    return total / (draws * len(test))


@torch.no_grad()
def importance_bits_per_dim(model: FlowModel, test: torch.Tensor, k: int) -> float:
    """The importance-weighted estimate over ``k`` dequantization draws, in bits/dim."""
    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(2)
        total = sum(model.importance_bits_per_dim(x, k).sum().item() for x in test.split(250))
    model.train()
    return total / len(test)


def sample_grids(model: FlowModel, folder: Path, name: str) -> None:
    """64 samples at T = 0.7 and T = 1 from the same base draws."""
    model.eval()
    for t in (0.7, 1.0):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            plots.image_grid(model.sample(64, temperature=t),
                             folder / f"quality-fashion-mnist-{name}-T{t:g}.png", 256,
                             title=f"Fashion-MNIST, {name}, T={t:g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--steps", type=int, default=1440)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-images", type=int, default=10000,
                        help="score on the first N test images (a smoke run takes few)")
    parser.add_argument("--precision", choices=pyro_flows.precision.PRECISIONS, default="fp32")
    parser.add_argument("--importance", type=int, default=16, metavar="K",
                        help="also report the importance-weighted estimate over K draws "
                             "(0: skip)")
    parser.add_argument("--curve-images", type=int, default=2000,
                        help="test images scored after each epoch for the learning curve")
    parser.add_argument("--figures", type=Path, default=None,
                        help="write 64-sample grids at T=0.7 and T=1 into this folder")
    parser.add_argument("--json", default=None, help="append the result (JSON lines)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setting = SETTINGS[args.setting]
    train, test = pyro_flows.data.load_fashion_mnist()
    train = train[: args.steps // 2 * 64]  # two epochs of args.steps / 2 batches
    test = test[: args.test_images]
    torch.manual_seed(0)
    model = FlowModel.build("glow", (1, 28, 28), data_levels=256, levels=2, steps=8,
                            hidden_channels=128, **setting["model"])
    flow_params = sum(p.numel() for p in model.transforms.parameters())
    all_params = sum(p.numel() for p in model.parameters())
    curve, pixels = [], model.event_shape.numel()

    def score_epoch(epoch: int, history) -> None:
        # the training weights, not the average: fit copies the average in only at the end
        curve.append({"steps": history.steps[-1],
                      "train_bpd": round(history.train_loss[-1] / (pixels * math.log(2)), 4),
                      "test_bpd_subset": round(test_bits_per_dim(
                          model, test[: args.curve_images], draws=1), 4)})
        print(json.dumps(curve[-1]), flush=True)

    began = time.perf_counter()
    pyro_flows.fit(model, train, epochs=2, batch_size=64, lr=setting["lr"], warmup_steps=200,
                   ema_decay=setting["ema_decay"], precision=args.precision, progress=False,
                   seed=0, callback=score_epoch if args.curve_images else None)
    seconds = time.perf_counter() - began
    bpd = test_bits_per_dim(model, test)
    iw = importance_bits_per_dim(model, test, args.importance) if args.importance else None
    name = f"{args.setting}-{args.precision}"
    if args.figures is not None:
        args.figures.mkdir(parents=True, exist_ok=True)
        sample_grids(model, args.figures, name)
    result = {"setting": args.setting, "precision": args.precision, "steps": args.steps,
              "test_images": len(test), "test_bpd": round(bpd, 4),
              f"test_iw{args.importance}_bpd": None if iw is None else round(iw, 4),
              "curve": curve,
              "flow_params": flow_params, "dequantizer_params": all_params - flow_params,
              "train_seconds": round(seconds, 1), "threads": args.threads,
              "finite": math.isfinite(bpd)}
    print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
