"""Where a training step's time goes, for one contender of ``speed.py`` (pyro-flows by default).

    python benchmarks/profile_step.py [--workloads tab16,tab64,glow8] [--contender pyro-flows]
                                      [--steps 20] [--top 25] [--threads 2] [--shapes] [--trace DIR]

Two views of the same steps, on 2 threads: ``torch.profiler`` by operator (self CPU time, so
the rows add up to the step), and ``cProfile`` by Python function, restricted to the files of
pyro-flows, Pyro and torch.distributions, to name the function that issues each operator.
``--shapes`` splits the operator table by input shapes; ``--trace DIR`` also writes a Chrome
trace per workload (open in chrome://tracing or Perfetto). On a machine other jobs share, run
with ``--threads 1`` too: two OpenMP threads wait for each other whenever one is descheduled,
which inflates every small parallel operator and distorts the shares.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pyro_flows.train import adam

from _contenders import CONTENDERS, WORKLOADS, build, make_data
from speed import LR, THREADS, train_step

FILES = ("pyro_flows", os.path.join("pyro", "distributions"), os.path.join("torch", "distributions"))


def profile_workload(name: str, contender: str, steps: int, top: int, shapes: bool,
                     trace: str | None) -> None:
    w = WORKLOADS[name]
    c = build(contender, w)
    data = make_data(w, 4)
    opt = adam(list(c.module.parameters()), LR)
    for i in range(3):  # Adam state, allocator
        train_step(c, opt, data[i % len(data)])
    t0 = time.perf_counter()
    for i in range(steps):
        train_step(c, opt, data[i % len(data)])
    step = (time.perf_counter() - t0) / steps
    print(f"\n==== {contender} on {name}, {torch.get_num_threads()} threads: {1e3 * step:.1f} ms "
          f"per training step (unprofiled, load {os.getloadavg()[0]:.1f})")

    with profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        for i in range(steps):
            train_step(c, opt, data[i % len(data)])
    table = prof.key_averages(group_by_input_shape=shapes)
    print(table.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40,
                      max_shapes_column_width=60))
    if trace:
        os.makedirs(trace, exist_ok=True)
        prof.export_chrome_trace(os.path.join(trace, f"{contender}-{name}.json"))

    prof_py = cProfile.Profile()
    prof_py.enable()
    for i in range(steps):
        train_step(c, opt, data[i % len(data)])
    prof_py.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof_py, stream=out).sort_stats("cumulative")
    stats.print_stats("|".join(FILES).replace("\\", "\\\\"), top)
    print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="tab16,tab64,glow8")
    p.add_argument("--contender", default="pyro-flows", choices=CONTENDERS)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--threads", type=int, default=THREADS)
    p.add_argument("--shapes", action="store_true", help="split operators by input shapes")
    p.add_argument("--trace", help="directory for Chrome traces")
    args = p.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        p.error(f"--steps and --threads must be at least 1, got {args.steps}, {args.threads}")
    torch.set_num_threads(args.threads)
    torch.distributions.Distribution.set_default_validate_args(False)
    for name in args.workloads.split(","):
        if name not in WORKLOADS:
            p.error(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
        profile_workload(name, args.contender, args.steps, args.top, args.shapes, args.trace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
