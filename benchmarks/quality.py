"""Quality ablation (issue 13): the README's digits job, one change per row, judged on the
held-out TEST split at equal optimizer steps and (near-)equal parameter count.

    OMP_NUM_THREADS=1 python benchmarks/quality.py [--rows baseline,variational,...]
                                                   [--seeds 0] [--epochs 30] [--json out.json]
                                                   [--figures benchmarks/figures]

Method. Every row builds its model with :meth:`pyro_flows.FlowModel.build` exactly as
``pyro-flows fit digits`` does (Glow, L=3 levels, K=8 steps, 64 hidden channels, uniform
dequantization, logit alpha 0.05) apart from the row's one change, initializes it with
:func:`pyro_flows.initialize` on the first batch, and trains it for the CLI's 30 epochs of the
1,437 training images at batch 64 (690 Adam steps, ``pyro_flows.train.adam``, gradient norm
clipped at 100, the CLI's 200 warm-up steps, the same data order as :func:`pyro_flows.fit`).
A small loop stands in for ``fit`` only because ``fit`` has no per-step hook for the weight
average and no schedules other than warm-up; each step is ``fit``'s.

Every run keeps a Polyak average of its weights (:class:`pyro_flows.ema.EMA`, decay 0.999 with
warm-up) and reports the test figures of both the last weights and the average. Figures:

* ``bound``: test bits/dim of the dequantization bound, ``-E_q[log p(v) - D log 17 - log q]``
  over ``D ln 2`` (uniform ``q``: Theis et al. 2016; variational ``q``: Ho et al. 2019), the
  mean of 2 draws of the noise (seeds 0 and 1) over all 180 test images;
* ``iw16``: the importance-weighted estimate with k = 16 draws
  (:meth:`pyro_flows.FlowModel.importance_bits_per_dim`), a tighter bound on the same
  discrete bits/dim.

The parameter count is that of the whole model (flow and, for variational dequantization, the
dequantizer, given separately). Wall time is the training loop's, on the threads given.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

import pyro_flows
from pyro_flows import FlowModel, plots
from pyro_flows.data import load
from pyro_flows.ema import EMA
from pyro_flows.train import adam

BASE = {"model": {"levels": None, "steps": 8, "hidden_channels": 64,
                  "dequantization": "uniform", "logit_alpha": 0.05},
        "lr": 1e-3, "warmup": 200, "schedule": "constant", "ema": 0.999}

# One change per row against BASE (the CLI's defaults for `fit digits`).
ROWS = {
    "baseline": {},
    "variational": {"model": {"dequantization": "variational",
                              "dequantizer": {"hidden_dims": (64, 64)}}},
    "alpha=0.01": {"model": {"logit_alpha": 0.01}},
    "alpha=0.001": {"model": {"logit_alpha": 0.001}},
    "alpha=0.2": {"model": {"logit_alpha": 0.2}},
    "no-logit": {"model": {"logit_alpha": None}},
    "lr=2e-3": {"lr": 2e-3},
    "cosine": {"schedule": "cosine"},
    "ema=0.99": {"ema": 0.99},
    "warmup=50": {"warmup": 50},
    "residual": {"model": {"residual": True}},
    "L2-K12-h78": {"model": {"levels": 2, "steps": 12, "hidden_channels": 78}},
    "K4-h106": {"model": {"steps": 4, "hidden_channels": 106}},
}


def settings(row: str) -> dict:
    """BASE with the changes of ``row``; rows may be joined with ``+`` to combine them."""
    s = {**BASE, "model": dict(BASE["model"])}
    for part in row.split("+"):
        if part not in ROWS:
            raise SystemExit(f"unknown row {part!r}; rows: {', '.join(ROWS)}")
        change = ROWS[part]
        s.update({k: v for k, v in change.items() if k != "model"})
        s["model"].update(change.get("model", {}))
    return s


def schedule(kind: str, warmup: int, total: int):
    """Learning-rate factor at step ``k``: linear warm-up, then constant or cosine to zero."""
    def factor(k: int) -> float:
        if k < warmup:
            return (k + 1) / warmup
        if kind == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (k - warmup) / max(1, total - warmup)))
    return factor


@torch.no_grad()
def test_figures(model: FlowModel, test: torch.Tensor, k: int) -> dict:
    """Bound (mean over 2 noise draws) and importance-weighted estimate, in bits/dim."""
    model.eval()
    bounds = []
    for seed in (0, 1):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            bounds.append(model.bits_per_dim(test).mean().item())
    with torch.random.fork_rng():
        torch.manual_seed(2)
        iw = model.importance_bits_per_dim(test, k).mean().item()
    model.train()
    return {"bound": sum(bounds) / 2, "bound_draws": bounds, f"iw{k}": iw}


def grids(model: FlowModel, folder: Path, row: str, weights: str, seed: int,
          levels: int) -> None:
    """64 samples at T = 0.7 and T = 1 from the same base draws."""
    for t in (0.7, 1.0):
        torch.manual_seed(seed)
        plots.image_grid(model.sample(64, temperature=t),
                         folder / f"quality-digits-{row}-{weights}-T{t:g}.png", levels,
                         title=f"digits, {row}, {weights} weights, T={t:g}")


def run(row: str, seed: int, epochs: int, batch_size: int = 64, k: int = 16,
        figures: Path | None = None) -> dict:
    s = settings(row)
    data = load("digits", seed=0)  # one fixed split; the seed varies the model and the noise
    torch.manual_seed(seed)
    model = FlowModel.build("glow", data.train.shape[1:], data_levels=data.levels, **s["model"])
    order = torch.Generator().manual_seed(seed)
    n = len(data.train)
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    first = torch.randperm(n, generator=torch.Generator().set_state(order.get_state()))
    pyro_flows.initialize(model, data.train[first[:batch_size]])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adam(params, s["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule(s["schedule"], s["warmup"], total))
    ema = EMA(model, s["ema"])
    model.train()
    began = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=order).split(batch_size):
            loss = -model.log_prob(data.train[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 100.0)
            optimizer.step()
            scheduler.step()
            ema.update(model)
    seconds = time.perf_counter() - began
    last = test_figures(model, data.test, k)
    if figures is not None:
        grids(model, figures, row, "last", seed, data.levels)
    with ema.average_weights(model):
        averaged = test_figures(model, data.test, k)
        if figures is not None:
            grids(model, figures, row, "ema", seed, data.levels)
    pre = model.preprocessing
    dequantizer = sum(p.numel() for p in pre.parameters()) if pre is not None else 0
    return {"row": row, "seed": seed, "steps": total, "seconds": round(seconds, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "dequantizer_parameters": dequantizer, "last": last, "ema": averaged,
            "settings": {**s, "model": {k_: (list(v) if isinstance(v, tuple) else v)
                                         for k_, v in s["model"].items()}}}


def table(results: list[dict]) -> str:
    lines = ["| row | seed | params (dequantizer) | s | test bound, last | iw16, last "
             "| test bound, EMA | iw16, EMA |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['row']} | {r['seed']} | {r['parameters']:,} "
                     f"({r['dequantizer_parameters']:,}) | {r['seconds']:.0f} "
                     f"| {r['last']['bound']:.3f} | {r['last']['iw16']:.3f} "
                     f"| {r['ema']['bound']:.3f} | {r['ema']['iw16']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS),
                        help="comma-separated rows; join rows with + to combine changes")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="append results (JSON lines)")
    parser.add_argument("--figures", type=Path, default=None, help="sample grids go here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"commit {commit}, torch {torch.__version__}, {args.threads} thread(s)", flush=True)
    results = []
    for row in args.rows.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            r = run(row, seed, args.epochs, figures=args.figures)
            r["commit"] = commit
            results.append(r)
            print(table([r]).splitlines()[-1], flush=True)
            if args.json is not None:
                with args.json.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    print(table(results))


if __name__ == "__main__":
    main(sys.argv[1:])
