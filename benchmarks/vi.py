"""Measure the variational-inference targets at full size, by running the examples.

Targets (reported in ``benchmarks/RESULTS.md``):

* funnel (10-D): ``AutoFlow``'s k-hat below 0.7 while ``AutoNormal``'s is above 0.7;
* eight schools (non-centred): ``AutoFlow``'s posterior sd within 10% of NUTS's for every
  parameter, and every standardized mean error below 0.1;
* VAE on binarized Fashion-MNIST: the flow posterior lowers the IWAE(1000) test NLL by at least
  1.5 nats against the Gaussian posterior, at equal epochs.

Each target runs its example's ``main`` with full sizes; the PNGs and a ``results.json`` with
every number go to ``--out``. Expect about 10 minutes for the funnel and eight schools together
and an hour for the VAE (100 epochs of each posterior, one thread) on 2 idle cores::

    nohup python benchmarks/vi.py --out vi_bench > vi_bench.log 2>&1 &
    python benchmarks/vi.py --only funnel eight_schools --out vi_bench
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TARGETS = ("funnel", "eight_schools", "vae")

KHAT_OK = 0.7
SD_TOLERANCE = 0.10
MEAN_TOLERANCE = 0.10
NLL_GAIN = 1.5


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def funnel(out: Path, seed: int) -> dict[str, Any]:
    result = load_example("funnel").main(["--out", str(out), "--seed", str(seed)])
    khat = result["khat"]
    return {
        "khat": khat,
        "met": khat["AutoFlow"] < KHAT_OK < khat["AutoNormal"],
        "moments_vs_exact": _records(result["table"]),
        "nuts_divergences": result["divergences"],
        "seconds": result["seconds"],
    }


def eight_schools(out: Path, seed: int) -> dict[str, Any]:
    result = load_example("eight_schools").main(["--out", str(out), "--seed", str(seed)])
    table = result["table"]
    flow = table.loc["AutoFlow"]
    sd_error = float((flow.sd_ratio - 1).abs().max())
    mean_error = float(flow.std_mean_error.abs().max())
    return {
        "khat": result["khat"],
        "met": sd_error <= SD_TOLERANCE and mean_error < MEAN_TOLERANCE,
        "autoflow_worst_sd_error": sd_error,
        "autoflow_worst_std_mean_error": mean_error,
        "autonormal_worst_sd_error": float((table.loc["AutoNormal"].sd_ratio - 1).abs().max()),
        "autonormal_worst_std_mean_error": float(
            table.loc["AutoNormal"].std_mean_error.abs().max()),
        "moments_vs_nuts": _records(table),
        "nuts_divergences": result["divergences"],
        "seconds": result["seconds"],
    }


def vae(out: Path, seed: int, epochs: int | None, iwae_points: int | None) -> dict[str, Any]:
    argv = ["--data", "fashion-mnist", "--out", str(out), "--seed", str(seed)]
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    if iwae_points is not None:
        argv += ["--iwae-points", str(iwae_points)]
    result = load_example("vae_flow").main(argv)
    return {
        "met": result["nll_gain"] >= NLL_GAIN,
        "elbo": result["elbo"],
        "nll": result["nll"],
        "nll_gain": result["nll_gain"],
        "nll_gain_se": result["nll_gain_se"],
        "iwae_minus_elbo": result["iwae_minus_elbo"],
        "train_elbo_per_epoch": result["history"],
        "sizes": vars(result["sizes"]),
        "seconds": result["seconds"],
    }


def _records(table) -> list[dict[str, Any]]:
    flat = table.reset_index()
    return json.loads(flat.to_json(orient="records"))


def _write_json(data: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--out", default="vi_bench", help="directory for PNGs and results.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-epochs", type=int, help="override the VAE's epochs")
    parser.add_argument("--iwae-points", type=int,
                        help="test images for IWAE(1000), 0 for all 10000 (the default)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "seed": args.seed,
    }
    runs = {
        "funnel": lambda: funnel(out / "funnel", args.seed),
        "eight_schools": lambda: eight_schools(out / "eight_schools", args.seed),
        "vae": lambda: vae(out / "vae", args.seed, args.vae_epochs, args.iwae_points),
    }
    for name in args.only:
        start = time.perf_counter()
        results[name] = runs[name]()
        results[name]["wall_seconds"] = time.perf_counter() - start
        _write_json(results, out / "results.json")  # after each target: a crash keeps the rest

    print("\nTargets:")
    if "funnel" in results:
        r = results["funnel"]
        print(f"  funnel        k-hat AutoFlow {r['khat']['AutoFlow']:.2f} (< {KHAT_OK}), "
              f"AutoNormal {r['khat']['AutoNormal']:.2f} (> {KHAT_OK}): "
              f"{'met' if r['met'] else 'MISSED'}")
    if "eight_schools" in results:
        r = results["eight_schools"]
        print(f"  eight schools AutoFlow worst |sd ratio - 1| {r['autoflow_worst_sd_error']:.3f} "
              f"(<= {SD_TOLERANCE}), worst |std. mean error| "
              f"{r['autoflow_worst_std_mean_error']:.3f} (< {MEAN_TOLERANCE}): "
              f"{'met' if r['met'] else 'MISSED'}")
    if "vae" in results:
        r = results["vae"]
        print(f"  VAE           IWAE test NLL gain {r['nll_gain']:.2f} +- {r['nll_gain_se']:.2f} "
              f"nats (>= {NLL_GAIN}): {'met' if r['met'] else 'MISSED'}")
    print(f"numbers in {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
