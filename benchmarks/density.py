"""Density benchmark: test bits/dim of NICE, RealNVP and Glow on digits and Fashion-MNIST, and
test NLL on the 2-D toys, all at an equal, fixed budget on one CPU thread.

    python benchmarks/density.py [--data digits,fashion-mnist,toys] [--flows nice,realnvp,glow]
                                 [--minutes-per-run M | --steps N] [--quick] [--json out.json]
                                 [--figures DIR] [--seed S]

Method. Every flow of a data set gets the same number of Adam steps at the same batch size,
learning rate and warm-up (:data:`SETTINGS`), through :func:`pyro_flows.fit` with validation
after each epoch, ending with the weights of the epoch with the best validation NLL. Images use
the multi-scale model of the registry (``levels`` scales of ``steps`` flow steps; ``nice`` and
``realnvp`` steps are additive / affine couplings with checkerboard and channel masks, ``glow``
steps are ActNorm, 1x1 conv, affine coupling) on uniformly dequantized, logit-transformed pixels;
the toys use the vector flows (``num_layers`` couplings). Parameter counts are kept comparable:
Glow gets the data set's hidden width and each other flow the width whose parameter count is
closest to Glow's. When an epoch over the whole training set holds more steps than the budget,
each epoch covers a fixed random subset of it. The test figure is
:func:`pyro_flows.cli.evaluate` on the whole test split (fixed dequantization noise); its
standard error is that of the means of 20 equal blocks of the test split.

``--minutes-per-run M`` turns minutes into steps: a few training steps of every flow are timed
and the slowest flow sets the step count, so the budget stays equal in steps.
``--steps N`` sets the steps of every data set. ``--quick`` (CI smoke, under two minutes) runs
a few steps and evaluates on fixed subsets of the validation and test splits.

Sample grids of the image models (digits and Fashion-MNIST, temperatures 0.7 and 1) go to
``--figures`` (``benchmarks/figures`` by default; none with ``--quick`` unless asked for).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

import pyro_flows
from pyro_flows import FlowModel
from pyro_flows import data as datasets
from pyro_flows.checkpoint import save_json
from pyro_flows.cli import evaluate
from pyro_flows.plots import image_grid

FLOWS = ("nice", "realnvp", "glow")
DATA = ("digits", "fashion-mnist", "toys")
REFERENCE = "glow"  # the flow whose parameter count the others are matched to
TEMPERATURES = (0.7, 1.0)
SE_BLOCKS = 20
FIGURES = Path(__file__).resolve().parent / "figures"


@dataclass(frozen=True)
class Setting:
    """The budget and architecture of one data set, the same for every flow."""

    steps: int  # Adam steps
    batch: int
    width: int  # Glow's hidden channels (images) or units (toys)
    arch: dict = field(default_factory=dict)  # levels/steps (images) or num_layers (toys)
    lr: float = 1e-3
    warmup: int = 100
    val_subset: int | None = None  # fixed subsets of the splits (--quick only)
    test_subset: int | None = None


SETTINGS = {
    "digits": Setting(steps=1500, batch=64, width=64, arch={"levels": 3, "steps": 4}),
    "fashion-mnist": Setting(steps=1500, batch=64, width=64, arch={"levels": 2, "steps": 4}),
    "toys": Setting(steps=1000, batch=256, width=64, arch={"num_layers": 8}),
}
QUICK = {
    "digits": dict(steps=30, warmup=10),
    "fashion-mnist": dict(steps=8, warmup=4, val_subset=256, test_subset=500),
    "toys": dict(steps=40, warmup=10),
}


# -- models --------------------------------------------------------------------------------
def builder(data: datasets.Splits, setting: Setting) -> Callable[[str, int], FlowModel]:
    """``make(flow, width)``: a fresh model of ``flow`` for ``data`` with hidden ``width``."""
    if data.kind == "image":
        return lambda flow, width: FlowModel.build(
            flow, data.event_shape, data_levels=data.levels, hidden_channels=width,
            **setting.arch)
    return lambda flow, width: FlowModel.build(flow, data.event_shape,
                                               hidden_dims=(width, width), **setting.arch)


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_width(make: Callable[[str, int], FlowModel], flow: str, target: int,
                  start: int) -> int:
    """The hidden width giving ``flow`` the parameter count closest to ``target`` (counts grow
    with the width, so a bisection finds it)."""
    lo, hi = 1, 4 * start
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if num_parameters(make(flow, mid)) <= target else (lo, mid)
    return min((lo, hi), key=lambda w: abs(num_parameters(make(flow, w)) - target))


def seconds_per_step(model: FlowModel, train: torch.Tensor, batch: int, repeats: int = 5) -> float:
    """Wall time of one Adam step, after a first step (allocations, Adam's state)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        x = train[torch.randint(len(train), (batch,), generator=gen)]
        opt.zero_grad(set_to_none=True)
        (-model.log_prob(x).mean()).backward()
        opt.step()

    step()
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - began) / repeats


def plan(n_train: int, steps: int, batch: int) -> tuple[int, int]:
    """``(epochs, examples per epoch)`` for about ``steps`` steps: whole passes over the training
    split when it is small, otherwise ``epochs`` passes over a subset of ``steps / epochs``
    batches, so that exactly ``steps`` steps are taken."""
    epochs = max(1, math.ceil(steps * batch / n_train))
    per_epoch = math.ceil(steps / epochs)
    if per_epoch * batch >= n_train:  # the whole split; fit's last batch may be partial
        return max(1, round(steps / math.ceil(n_train / batch))), n_train
    return epochs, per_epoch * batch


# -- one run -------------------------------------------------------------------------------
def score_test(model: FlowModel, test: torch.Tensor, seed: int) -> dict:
    """``evaluate`` on the whole test split, and the standard error from block means."""
    began = time.perf_counter()
    result = evaluate(model, test, seed=seed)
    key = "test_bpd" if "test_bpd" in result else "test_nll"
    blocks = [evaluate(model, b, seed=seed)[key] for b in test.tensor_split(SE_BLOCKS) if len(b)]
    result["test_se"] = statistics.stdev(blocks) / math.sqrt(len(blocks))
    result["eval_seconds"] = time.perf_counter() - began
    return result


def run(data: datasets.Splits, flow: str, width: int, setting: Setting, seed: int,
        figures: Path | None) -> dict:
    torch.manual_seed(seed)
    model = builder(data, setting)(flow, width)
    epochs, n_epoch = plan(len(data.train), setting.steps, setting.batch)
    subset = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
    train = data.train[subset[:n_epoch]] if n_epoch < len(data.train) else data.train
    val, test = data.val[: setting.val_subset], data.test[: setting.test_subset]
    began = time.perf_counter()
    history = pyro_flows.fit(model, train, val_data=val, epochs=epochs, batch_size=setting.batch,
                             lr=setting.lr, warmup_steps=setting.warmup, patience=epochs,
                             seed=seed, progress=False)
    train_seconds = time.perf_counter() - began
    best = -1 if history.best_epoch is None else history.best_epoch  # None: no finite val loss
    model.eval()
    result = {
        "data": data.name, "flow": flow, "width": width, "params": num_parameters(model),
        "steps": history.steps[-1], "batch": setting.batch, "epochs": len(history.train_loss),
        "train_examples_per_epoch": len(train), "skipped_steps": sum(history.skipped_steps),
        "best_epoch": history.best_epoch, "train_seconds": train_seconds,
        "val_nll": history.val_loss[best], "n_test": len(test),
        **score_test(model, test, seed), "history": history.to_dict(),
    }
    if history.val_bits_per_dim and data.levels is not None:  # continuous: report nats
        result["val_bpd"] = history.val_bits_per_dim[best]
    if figures is not None and data.kind == "image":
        figures.mkdir(parents=True, exist_ok=True)
        for t in TEMPERATURES:
            torch.manual_seed(seed)
            path = figures / f"{data.name}-{flow}-T{t:g}.png"
            image_grid(model.sample(64, temperature=t), path, data.levels,
                       title=f"{flow} on {data.name}, T={t:g}")
            result.setdefault("figures", []).append(str(path))
    return result


# -- a data set, all flows -----------------------------------------------------------------
def load(name: str, seed: int) -> list[datasets.Splits]:
    names = datasets.TOYS if name == "toys" else (name,)
    return [datasets.load(n, seed=seed) for n in names]


def widths(data: datasets.Splits, setting: Setting, flows: list[str]) -> dict[str, int]:
    make = builder(data, setting)
    target = num_parameters(make(REFERENCE, setting.width))
    return {f: setting.width if f == REFERENCE else matched_width(make, f, target, setting.width)
            for f in flows}


def calibrate(data: datasets.Splits, setting: Setting, chosen: dict[str, int],
              minutes: float) -> int:
    """Steps that the slowest flow takes in ``minutes`` (training only)."""
    slowest = 0.0
    for flow, width in chosen.items():
        torch.manual_seed(0)
        model = builder(data, setting)(flow, width)
        slowest = max(slowest, seconds_per_step(model, data.train, setting.batch))
    return max(1, int(minutes * 60 / slowest))


def bench(name: str, flows: list[str], setting: Setting, args: argparse.Namespace,
          figures: Path | None) -> list[dict]:
    sets = load(name, args.seed)
    chosen = widths(sets[0], setting, flows)
    if args.minutes_per_run is not None:
        setting = replace(setting, steps=calibrate(sets[0], setting, chosen, args.minutes_per_run))
    print(f"\n== {name}: {setting.steps} steps of batch {setting.batch}, widths {chosen}",
          flush=True)
    results = []
    for data in sets:
        for flow in flows:
            r = run(data, flow, chosen[flow], setting, args.seed, figures)
            unit = "bits/dim" if "test_bpd" in r else "nats"
            value = r.get("test_bpd", r["test_nll"])
            print(f"{data.name:>14} {flow:>8}: test {value:.4f} +- {r['test_se']:.4f} {unit}, "
                  f"{r['params']} params, {r['steps']} steps in {r['train_seconds']:.0f} s "
                  f"(+{r['eval_seconds']:.0f} s eval), skipped {r['skipped_steps']}", flush=True)
            results.append(r)
    return results


# -- reporting -----------------------------------------------------------------------------
def ordering(results: list[dict], key: str) -> list[str]:
    """Per data set, whether Glow < RealNVP < NICE held for ``key``."""
    lines = []
    for name in dict.fromkeys(r["data"] for r in results):
        got = {r["flow"]: r[key] for r in results if r["data"] == name and key in r}
        if all(f in got for f in FLOWS):
            held = got["glow"] < got["realnvp"] < got["nice"]
            order = " < ".join(sorted(got, key=got.get))
            lines.append(f"{name}: {order} ({'held' if held else 'did NOT hold'})")
    return lines


def table(results: list[dict]) -> str:
    rows = ["| data | flow | width | params | steps x batch | train s | val | test | +- |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        unit = "bits/dim" if "test_bpd" in r else "nats"
        rows.append(f"| {r['data']} | {r['flow']} | {r['width']} | {r['params']:,} | "
                    f"{r['steps']} x {r['batch']} | {r['train_seconds']:.0f} | "
                    f"{r.get('val_bpd', r['val_nll']):.4f} | "
                    f"{r.get('test_bpd', r['test_nll']):.4f} {unit} | {r['test_se']:.4f} |")
    return "\n".join(rows)


def environment() -> dict:
    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    versions = {p: metadata.version(p) for p in ("torch", "pyro-ppl", "numpy", "pyro-flows")}
    return {"cpu": cpu, "nproc": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=",".join(DATA), help=f"comma-separated: {', '.join(DATA)}")
    p.add_argument("--flows", default=",".join(FLOWS), help=f"comma-separated: {', '.join(FLOWS)}")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes-per-run", type=float, help="training minutes per flow and "
                        "data set (each toy is one), turned into an equal step count")
    budget.add_argument("--steps", type=int, help="Adam steps per run, for every data set")
    p.add_argument("--quick", action="store_true", help="CI smoke: a few steps, test subsets")
    p.add_argument("--json", help="write every result (with histories) to this file")
    p.add_argument("--figures", type=Path, default=None,
                   help=f"directory for the image models' sample grids (default {FIGURES}; "
                        "none with --quick)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = [s.strip() for s in args.data.split(",") if s.strip()]
    flows = [s.strip() for s in args.flows.split(",") if s.strip()]
    unknown = [n for n in names if n not in DATA] + [f for f in flows if f not in FLOWS]
    if unknown or not names or not flows:
        p.error(f"unknown or missing data/flows {unknown}; data: {', '.join(DATA)}; "
                f"flows: {', '.join(FLOWS)}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    if args.minutes_per_run is not None and not args.minutes_per_run > 0:
        p.error(f"--minutes-per-run must be positive, got {args.minutes_per_run}")
    # Two cores shared with other jobs: more threads than one make torch many times slower.
    torch.set_num_threads(1)
    figures = args.figures if args.figures is not None else (None if args.quick else FIGURES)
    env = environment()
    print(f"{env['cpu']}, {env['nproc']} cores, 1 thread, load {env['load_average']}; "
          f"{env['versions']}", flush=True)
    began = time.perf_counter()
    results = []
    for name in names:
        setting = replace(SETTINGS[name], **QUICK[name]) if args.quick else SETTINGS[name]
        if args.steps is not None:
            setting = replace(setting, steps=args.steps)
        results += bench(name, flows, setting, args, figures)
    env["wall_seconds"] = time.perf_counter() - began
    print(f"\n{table(results)}\n")
    checks = ordering(results, "test_bpd")
    toy_wins = ordering([r for r in results if "test_bpd" not in r], "test_nll")
    for line in checks + toy_wins:
        print(line)
    print(f"\ntotal {env['wall_seconds']:.0f} s")
    if args.json:
        save_json({"argv": sys.argv, "environment": env, "quick": args.quick,
                   "orderings": checks + toy_wins, "results": results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
