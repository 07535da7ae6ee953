"""``torch.compile`` (inductor, ``fullgraph=True``) against eager for ``FlowModel.log_prob`` and
``FlowModel.rsample`` (continuous data, so no dequantization noise).

Eager and compiled calls are interleaved round by round in one process; the figure is the
median over rounds of the eager/compiled time ratio (above 1: compiled is faster)::

    python benchmarks/compile.py --rounds 20 --json compile.json
    python benchmarks/compile.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import pyro_flows

WORKLOADS = {
    "tab16": dict(shape=(16,), kwargs=dict(num_layers=8, hidden_dims=(256, 256)), batch=1024),
    "glow8": dict(shape=(1, 8, 8), kwargs=dict(levels=2, steps=8, hidden_channels=128), batch=256),
}


def _timed(fn, *args) -> float:
    # Fresh inputs each call: eager transforms would otherwise answer from their cache.
    args = tuple(a.clone() for a in args)
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def bench(name: str, flow: str, rounds: int, quick: bool) -> dict:
    spec = WORKLOADS[name]
    shape, batch = spec["shape"], 64 if quick else spec["batch"]
    kwargs = dict(spec["kwargs"])
    if quick:
        kwargs = {k: (2 if k in ("num_layers", "steps") else v) for k, v in kwargs.items()}
    torch.manual_seed(0)
    model = pyro_flows.FlowModel.build(flow, shape, **kwargs)
    x = torch.randn(batch, *shape)
    with torch.no_grad():
        pyro_flows.initialize(model, x)  # data-dependent ActNorm, once, before compiling

        def log_prob(x):
            return model.log_prob(x)

        def sample():
            return model.rsample(batch)

        result = {"workload": name, "flow": flow}
        for label, eager, args in (("log_prob", log_prob, (x,)), ("sample", sample, ())):
            compiled = torch.compile(eager, fullgraph=True)
            start = time.perf_counter()
            compiled(*args)
            compiled(*(a.clone() for a in args))  # the second call may specialize once more
            result[f"{label}_compile_seconds"] = time.perf_counter() - start
            ratios = []
            for _ in range(rounds):
                te, tc = _timed(eager, *args), _timed(compiled, *args)
                ratios.append(te / tc)
            result[f"{label}_speedup"] = statistics.median(ratios)
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name, flow in (("tab16", "realnvp"), ("tab16", "glow"), ("glow8", "glow")):
        rows.append(bench(name, flow, 3 if args.quick else args.rounds, args.quick))
        r = rows[-1]
        print(f"{name:6s} {flow:8s} log_prob x{r['log_prob_speedup']:.2f} "
              f"(compile {r['log_prob_compile_seconds']:.0f} s), sample x{r['sample_speedup']:.2f} "
              f"(compile {r['sample_compile_seconds']:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
