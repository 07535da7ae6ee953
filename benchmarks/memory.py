"""Peak memory and time of a Glow training step, plain backprop vs ``memory_efficient=True``.

Workload ``glow32``: images 3x32x32, L=3 levels, K steps per level, 256 hidden channels,
batch 32. Each (K, mode) runs in a fresh subprocess so that its peak resident memory is its
own; the figure reported is the peak during training minus the resident memory after the model
is built and ActNorm is initialized, i.e. what the training step adds. On Linux the kernel's peak
counter is reset after the initialization (``/proc/self/clear_refs``), so the building's and
the initialization's own peaks do not count; elsewhere both figures are ``ru_maxrss``::

    python benchmarks/memory.py --depths 8,16,32,64 --json memory.json
    python benchmarks/memory.py --quick          # CI smoke: tiny sizes
    python benchmarks/memory.py --precision bf16-mixed   # the loss under pyro_flows.precision

Target (performance issue): at K=32, memory_efficient uses <= 0.4x the memory of plain backprop
at <= 1.5x the time per step. Time is the median step in wall-clock and in process CPU time; on a
machine other jobs share, the CPU time is the figure that time slices lent away do not inflate.
The time ratio to quote is the interleaved one: both models in one process, their steps
alternated, the median over pairs of the ratio of CPU times (load that drifts between the
separate runs cancels).

``--malloc-keep`` runs the children with glibc told to keep freed memory
(``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` at 1 GiB). By default glibc hands
large freed blocks back to the kernel, and the memory-saving backward, which allocates and
frees one block's activations at a time, then takes a page fault on every page of every block
it reruns: in a fresh process that is most of its extra time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


_KEEP = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**30)}


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _restart_peak() -> int:
    """The resident memory now, in KiB, with the kernel's peak counter reset to it (Linux's
    ``/proc/self/clear_refs``), so that :func:`_peak` is the peak from here on. Without that
    (another OS), the peak so far (``ru_maxrss``): then the building and the initialization's
    own peak are subtracted too, and the extra a step adds is understated."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS") or 0
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak() -> int:
    """The peak resident memory in KiB since :func:`_restart_peak` (where Linux allows)."""
    return _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(depth: int, lean: bool, shape: tuple[int, int, int], levels: int, hidden: int,
          batch: int, steps: int, threads: int, precision: str = "fp32") -> dict:
    import pyro.distributions as dist
    import torch

    import pyro_flows

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    glow = pyro_flows.build("glow", shape, levels=levels, steps=depth, hidden_channels=hidden,
                            memory_efficient=lean)
    base = dist.Normal(torch.zeros(shape), 1.0).to_event(3)
    density = dist.TransformedDistribution(base, [glow])
    optim = torch.optim.Adam(glow.parameters(), lr=1e-4)
    x = torch.rand(batch, *shape)
    pyro_flows.initialize(glow, x)  # ActNorm's data-dependent initialization
    before = _restart_peak()
    times, cpu_times = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        with pyro_flows.precision.autocast(precision):
            loss = -density.log_prob(x).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = _peak()
    return {"depth": depth, "memory_efficient": lean, "precision": precision,
            "peak_extra_mib": (peak - before) / 1024, "resident_mib_before": before / 1024,
            "seconds_per_step": sorted(times)[len(times) // 2],
            "cpu_seconds_per_step": sorted(cpu_times)[len(cpu_times) // 2], "loss": loss.item(),
            "parameters": sum(p.numel() for p in glow.parameters())}


def interleaved(depth: int, shape: tuple[int, int, int], levels: int, hidden: int, batch: int,
                steps: int, threads: int, precision: str = "fp32") -> dict:
    """Plain and memory-efficient steps alternated in one process: the median ratio of their
    CPU times over ``steps`` pairs (after one warm-up pair)."""
    import statistics

    import pyro.distributions as dist
    import torch

    import pyro_flows

    torch.set_num_threads(threads)
    x = torch.rand(batch, *shape)
    runs = []
    for lean in (False, True):
        torch.manual_seed(0)
        glow = pyro_flows.initialize(pyro_flows.build(
            "glow", shape, levels=levels, steps=depth, hidden_channels=hidden,
            memory_efficient=lean), x)
        density = dist.TransformedDistribution(dist.Normal(torch.zeros(shape), 1.0).to_event(3),
                                               [glow])
        runs.append((density, torch.optim.Adam(glow.parameters(), lr=1e-4)))
    times: list[list[float]] = [[], []]
    for i in range(steps + 1):
        for k, (density, optim) in enumerate(runs):
            start = time.process_time()
            with pyro_flows.precision.autocast(precision):
                loss = -density.log_prob(x).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            if i:
                times[k].append(time.process_time() - start)
    ratio = statistics.median(b / a for a, b in zip(*times))
    return {"depth": depth, "precision": precision, "interleaved_cpu_time_ratio": ratio}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="8,16,32,64")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32", help="fp32, bf16-mixed or fp16-mixed")
    parser.add_argument("--json", default=None)
    parser.add_argument("--malloc-keep", action="store_true",
                        help="children keep freed memory instead of returning it to the kernel")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--interleaved", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = dict(shape=(3, 8, 8), levels=2, hidden=16, batch=8) if args.quick else \
        dict(shape=(3, 32, 32), levels=3, hidden=256, batch=32)
    if args.interleaved:
        print(json.dumps(interleaved(args.interleaved, steps=args.steps, threads=args.threads,
                                     precision=args.precision, **size)))
        return []
    if args.child:
        depth, lean = args.child.split(",")
        print(json.dumps(child(int(depth), lean == "1", steps=args.steps, threads=args.threads,
                               precision=args.precision, **size)))
        return []
    depths = [2, 4] if args.quick else [int(k) for k in args.depths.split(",")]
    env = {**os.environ, **(_KEEP if args.malloc_keep else {})}
    rows = []
    for depth in depths:
        for lean in (False, True):
            cmd = [sys.executable, __file__, "--child", f"{depth},{int(lean)}",
                   "--steps", str(args.steps), "--threads", str(args.threads),
                   "--precision", args.precision] + (
                       ["--quick"] if args.quick else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"K={depth:3d} {'memory_efficient' if lean else 'plain':16s} "
                  f"peak +{r['peak_extra_mib']:8.1f} MiB  {r['seconds_per_step']:7.2f} s/step "
                  f"(CPU {r['cpu_seconds_per_step']:.2f} s)",
                  flush=True)
        cmd = [sys.executable, __file__, "--interleaved", str(depth), "--steps", str(args.steps),
               "--threads", str(args.threads), "--precision", args.precision] + (
                   ["--quick"] if args.quick else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        ab = json.loads(out.strip().splitlines()[-1])
        plain, lean_row = rows[-2], rows[-1]
        lean_row["interleaved_cpu_time_ratio"] = ab["interleaved_cpu_time_ratio"]
        print(f"K={depth:3d} ratio: memory {lean_row['peak_extra_mib'] / plain['peak_extra_mib']:.2f}x"
              f", time {lean_row['seconds_per_step'] / plain['seconds_per_step']:.2f}x (CPU time "
              f"{lean_row['cpu_seconds_per_step'] / plain['cpu_seconds_per_step']:.2f}x; interleaved, "
              f"CPU time {ab['interleaved_cpu_time_ratio']:.2f}x)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
