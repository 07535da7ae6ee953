"""Speed of pyro-flows against Pyro's built-ins, zuko, nflows and normflows on one architecture
per workload (see ``_contenders.py``), in one process on 2 threads.

    python benchmarks/speed.py [--workloads tab16,tab64,glow8,glow32] [--contenders ...]
                               [--rounds N] [--quick] [--json out.json] [--no-memory]
                               [--threads 2] [--clock wall|cpu] [--block SECONDS]
                               [--device cpu|cuda] [--compile]

Contenders ``pyro-flows-bf16`` and ``pyro-bf16`` are pyro-flows and Pyro's flow under
``autocast("bf16-mixed")``: pyro-flows' exact mixed precision, and autocast applied to Pyro
naively. Beside the speed, each flow's log-det error under its precision against the exact
log-det of the map it computed (``_quality.py``; workloads of at most 64 dimensions, flows that
are torch Transforms). The ratios of issue 12 (``TARGETS``) are printed per workload.

Run it on an idle machine. When other jobs share the cores, two OpenMP threads wait for each
other whenever one is descheduled, and every parallel operator pays a time slice: the figures
then measure the scheduler. ``--threads 1 --clock cpu`` (process CPU time) stays meaningful.

Method. Contenders are interleaved round by round (A B C A B C ...): each round times every
measure of every contender once, a block of calls long enough (calibrated during warm-up) to
last ``--block`` seconds. A contender's figure is the median over rounds; a ratio is the median
over rounds of ``time(contender) / time(pyro-flows)`` in the same round, so load that drifts
between rounds cancels (values above 1: pyro-flows is faster). Measures:

* ``train``: steps/s of ``zero_grad; (-log_prob(x).mean()).backward(); Adam.step``, with the
  Adam ``pyro_flows.fit`` uses (``pyro_flows.train.adam``: torch's fused kernel) for every
  contender, so the optimizer is the same work everywhere;
* ``log_prob`` / ``sample``: samples/s with autograd on (what SVI and training see), and the
  same under ``torch.no_grad()``;
* GFLOP/s of the training step: its FLOPs counted by ``torch.utils.flop_counter`` (matmuls and
  convolutions, forward and backward) over the median step time, against the GFLOP/s of plain
  ``torch.matmul`` on the GEMMs of pyro-flows' networks (every Linear / Conv2d as im2col GEMM,
  forward, grad-input and grad-weight shapes), timed in the same rounds;
* memory of a training step: (a) peak RSS, in a fresh subprocess per contender and workload
  with glibc's malloc thresholds fixed so freed activations go back to the system: after one
  warm-up step (Adam state, ActNorm initialization, code paged in; its own peak is kept as
  ``first_step_mb``), the peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``) of each
  of 3 steps above the resident size before it, median reported (``ru_maxrss`` delta where
  ``clear_refs`` is unavailable); (b) in process, the bytes autograd saves for backward
  (unique storages, parameters excluded), a deterministic count of activation memory.

Distribution argument validation is off for every contender, as in ``pyro_flows.FlowModel``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pyro_flows.nn import ConvNet
from pyro_flows.train import adam

from _contenders import CONTENDERS, WORKLOADS, Contender, Workload, applicable, build, make_data
from _quality import logdet_error

THREADS = 2
LR = 1e-4
BATCHES = 4  # distinct data batches, cycled
MEASURES = ("train", "log_prob", "sample", "log_prob_nograd", "sample_nograd")
ROUNDS = {"tab16": 15, "tab64": 15, "glow8": 9, "glow32": 4}
QUICK_ROUNDS = {"tab16": 2, "tab64": 2, "glow8": 2, "glow32": 1}
REFERENCE = "pyro-flows"
# Issue 12: training-step ratio of a contender to the fastest of some peers, and its goal.
TARGETS = {  # workload: [(contender, peers, minimum ratio)]
    "tab16": [("pyro-flows-bf16", ("pyro",), 1.5), ("pyro-flows", ("pyro",), None),
              ("pyro-bf16", ("pyro",), None)],
    "tab64": [("pyro-flows-bf16", ("pyro",), 1.5), ("pyro-flows", ("pyro",), None),
              ("pyro-bf16", ("pyro",), None)],
    "glow8": [("pyro-flows-bf16", ("normflows",), 2.0), ("pyro-flows", ("normflows",), 1.4),
              ("pyro-bf16", ("pyro",), None)],
    "glow32": [("pyro-flows-bf16", ("normflows",), 2.0), ("pyro-flows", ("normflows",), 1.4),
               ("pyro-bf16", ("pyro",), None)],
}
PRECISION = {"pyro-flows-bf16": "bf16-mixed", "pyro-bf16": "bf16-mixed"}
QUALITY_MAX_DIM = 64  # the exact log-det check takes one backward pass per dimension
MATMUL_TARGET = ("tab64", 0.6)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def train_step(c: Contender, opt: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    loss = -c.log_prob(x).mean()
    loss.backward()
    opt.step()
    return loss


def _synchronized(clock: Callable[[], float], device: torch.device) -> Callable[[], float]:
    """``clock`` read after the device's queued work is done (CUDA runs asynchronously)."""
    if device.type != "cuda":
        return clock
    return lambda: (torch.cuda.synchronize(device), clock())[1]


def _compiled(c: Contender) -> Contender:
    """``c`` with its log-density under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs
    on a GPU)."""
    log_prob = torch.compile(c.log_prob, mode="reduce-overhead")
    return Contender(c.name, c.module, log_prob, c.sample,
                     c.differences + ('log_prob under torch.compile(mode="reduce-overhead")',))


class Runner:
    """One contender on one workload, ready to time any measure."""

    def __init__(self, c: Contender, w: Workload, data: list[torch.Tensor],
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.c, self.w, self.data, self.i = c, w, data, 0
        self.clock = _synchronized(clock, data[0].device)
        self.opt = adam(list(c.module.parameters()), LR)
        self.reps = dict.fromkeys(MEASURES, 1)
        self.loss = float("nan")

    def _batch(self) -> torch.Tensor:
        self.i += 1
        return self.data[self.i % len(self.data)]

    def call(self, measure: str) -> None:
        if measure == "train":
            self.loss = train_step(self.c, self.opt, self._batch()).item()
            return
        grad = not measure.endswith("_nograd")
        with torch.set_grad_enabled(grad):
            if measure.startswith("log_prob"):
                self.c.log_prob(self._batch())
            else:
                self.c.sample(self.w.batch)

    def time(self, measure: str) -> float:
        """Seconds per call, over a block of ``self.reps[measure]`` calls."""
        reps = self.reps[measure]
        t0 = self.clock()
        for _ in range(reps):
            self.call(measure)
        return (self.clock() - t0) / reps

    def warm_up(self, block: float) -> None:
        """First calls (ActNorm initialization, Adam state, allocator) and block sizes."""
        for measure in MEASURES:
            self.reps[measure] = 1
            t = self.time(measure)
            if t < block:  # the first call is the slow one; calibrate on a second when cheap
                t = self.time(measure)
            self.reps[measure] = max(1, min(500, round(block / t)))

    def flops(self) -> int:
        with FlopCounterMode(display=False) as counter:
            train_step(self.c, self.opt, self._batch().clone())
        return counter.get_total_flops()


# -- the matmul reference -------------------------------------------------------------------
def gemm_shapes(c: Contender, x: torch.Tensor) -> list[tuple[int, int, int]]:
    """(M, K, N) of every GEMM a training step of ``c``'s Linear/Conv2d layers implies, a
    convolution in its im2col form. A pyro-flows ``ConvNet`` on a small image computes its
    layers as other matrix products without calling them, so it is counted as its three layers."""
    forward: list[tuple[int, int, int]] = []

    def conv(m: nn.Conv2d, pixels: int) -> tuple[int, int, int]:
        k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        return pixels, k, m.out_channels

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if isinstance(m, ConvNet):
            pixels = out.numel() // m.conv_out.out_channels
            forward.extend(conv(layer, pixels) for layer in (m.conv_in, m.conv_hidden, m.conv_out))
        elif isinstance(m, nn.Linear):
            forward.append((inputs[0].numel() // m.in_features, m.in_features, m.out_features))
        else:
            forward.append(conv(m, out.numel() // m.out_channels))

    inside = {id(layer) for net in c.module.modules() if isinstance(net, ConvNet)
              for layer in net.modules() if layer is not net}
    handles = [m.register_forward_hook(hook) for m in c.module.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, ConvNet)) and id(m) not in inside]
    with torch.no_grad():
        c.log_prob(x.clone())  # a new tensor: a transform cache must not answer from memory
    for h in handles:
        h.remove()
    # forward (M,K)@(K,N); grad-input (M,N)@(N,K); grad-weight (K,M)@(M,N)
    return [s for m, k, n in forward for s in ((m, k, n), (m, n, k), (k, m, n))]


class MatmulReference:
    """Plain ``torch.matmul`` over a list of GEMM shapes: the attainable GFLOP/s."""

    def __init__(self, shapes: list[tuple[int, int, int]], block: float,
                 clock: Callable[[], float], device: torch.device) -> None:
        self.clock = _synchronized(clock, device)
        self.pairs = [(torch.randn(m, k, device=device), torch.randn(k, n, device=device))
                      for m, k, n in shapes]
        self.flops = sum(2 * m * k * n for m, k, n in shapes)
        self.reps = 1
        t = self.time()
        self.reps = max(1, round(block / t))

    def time(self) -> float:
        t0 = self.clock()
        for _ in range(self.reps):
            for a, b in self.pairs:
                torch.matmul(a, b)
        return (self.clock() - t0) / self.reps


# -- memory ---------------------------------------------------------------------------------
# glibc raises its mmap threshold after the first large free and then keeps freed activations
# in the heap, so a second step would not raise RSS at all; fixed thresholds return them to
# the system at once, which makes every step's peak visible.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
_PROBE_STEPS = 3


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _step_peak_mb(runner: Runner) -> tuple[float, str]:
    """Peak RSS of one training step above the resident size before it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before = _status_kb("VmRSS")
        runner.call("train")
        return (_status_kb("VmHWM") - before) / 1024, "VmHWM after clear_refs - VmRSS"
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        runner.call("train")
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "ru_maxrss delta"


def memory_probe(name: str, workload: str) -> dict:
    w = WORKLOADS[workload]
    runner = Runner(build(name, w), w, make_data(w, 2))
    first, method = _step_peak_mb(runner)  # + Adam state, ActNorm init, code paged in
    steady = [_step_peak_mb(runner)[0] for _ in range(_PROBE_STEPS)]
    return {"train_step_mb": statistics.median(steady), "first_step_mb": first,
            "peak_rss_mb": _status_kb("VmHWM") / 1024, "method": method}


def measure_memory(name: str, workload: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", name, workload,
           "--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                         env={**os.environ, **_MALLOC_ENV})
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def saved_activations_mb(c: Contender, x: torch.Tensor) -> float:
    """Tensors autograd keeps for the backward of ``log_prob(x)``, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in c.module.parameters()}
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            sizes[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        c.log_prob(x.clone())
    return sum(sizes.values()) / 2**20


# -- one workload ---------------------------------------------------------------------------
def run_workload(w: Workload, names: list[str], rounds: int, block: float, memory: bool,
                 clock: Callable[[], float] = time.perf_counter,
                 device: torch.device = torch.device("cpu"), compile: bool = False) -> dict:
    skipped = {n: r for n in names if (r := applicable(n, w))}
    names = [n for n in names if n not in skipped]
    print(f"\n== {w.name}: event {w.event_shape}, batch {w.batch}, {rounds} rounds; "
          f"contenders {', '.join(names)}", flush=True)
    mem = {n: measure_memory(n, w.name) for n in names} if memory else {}
    data = [x.to(device) for x in make_data(w, BATCHES)]
    runners = {}
    for n in names:
        try:
            with device:  # parameters and the base distribution's tensors on the device
                c = build(n, w)
        except RuntimeError as e:  # a peer that cannot be built on this device
            skipped[n] = f"cannot be built on {device}: {e}"
            continue
        runners[n] = Runner(_compiled(c) if compile else c, w, data, clock)
    names = list(runners)
    for r in runners.values():
        r.warm_up(block)
    flops = {n: r.flops() for n, r in runners.items()}
    saved = {n: saved_activations_mb(r.c, data[0]) for n, r in runners.items()}
    ref_runner = runners.get(REFERENCE) or next(iter(runners.values()))
    matmul = MatmulReference(gemm_shapes(ref_runner.c, data[0]), block, clock, device)
    times = {(n, m): [] for n in names for m in MEASURES}
    matmul_times, loads = [], []
    for k in range(rounds):
        loads.append(os.getloadavg()[0])
        for m in MEASURES:
            for n in names:
                times[n, m].append(runners[n].time(m))
        matmul_times.append(matmul.time())
        print(f"  round {k + 1}/{rounds} done (load {loads[-1]:.1f})", flush=True)
    matmul_gflops = matmul.flops / statistics.median(matmul_times) / 1e9
    result = {"workload": vars(w), "rounds": rounds, "skipped": skipped, "load_avg_1min": loads,
              "matmul_gflops": matmul_gflops, "contenders": {}}
    for n, r in runners.items():
        med = {m: statistics.median(times[n, m]) for m in MEASURES}
        ratios = {m: statistics.median(a / b for a, b in zip(times[n, m], times[REFERENCE, m]))
                  for m in MEASURES} if REFERENCE in runners else {}
        result["contenders"][n] = {
            "params": r.c.num_params, "differences": list(r.c.differences),
            "median_s": med, "best_s": {m: min(times[n, m]) for m in MEASURES},
            "rounds_s": {m: times[n, m] for m in MEASURES},
            "steps_per_s": 1 / med["train"],
            "samples_per_s": {m: w.batch / med[m] for m in MEASURES if m != "train"},
            "ratio_vs_pyro_flows": ratios, "train_flops": flops[n],
            "train_gflops": flops[n] / med["train"] / 1e9,
            "final_loss": r.loss, "memory": mem.get(n, {}), "saved_activations_mb": saved[n],
        }
    for n, r in runners.items():
        result["contenders"][n]["logdet_error_nats"] = quality(r.c, w, data[0])
    result["targets"] = check_targets(w.name, times, result)
    print(table(result), flush=True)
    return result


def check_targets(workload: str, times: dict, result: dict) -> list[dict]:
    out = []
    for name, peers, goal in TARGETS.get(workload, []):
        present = [p for p in peers if p in result["contenders"]]
        if name not in result["contenders"] or not present:
            continue
        best = [min(times[p, "train"][k] for p in present) for k in range(result["rounds"])]
        ratio = statistics.median(b / r for b, r in zip(best, times[name, "train"]))
        best_rounds = min(min(times[p, "train"]) for p in present) / min(times[name, "train"])
        out.append({"what": f"{name} train step vs fastest of {'/'.join(present)}", "goal": goal,
                    "ratio": ratio, "met": None if goal is None else ratio >= goal,
                    "ratio_of_best_rounds": best_rounds})
    if workload == MATMUL_TARGET[0] and REFERENCE in result["contenders"]:
        share = result["contenders"][REFERENCE]["train_gflops"] / result["matmul_gflops"]
        out.append({"what": "train GFLOP/s / matmul GFLOP/s", "goal": MATMUL_TARGET[1],
                    "ratio": share, "met": share >= MATMUL_TARGET[1]})
    return out


def quality(c: Contender, w: Workload, x: torch.Tensor) -> float | None:
    """Log-det error (nats) of ``c``'s flow at its precision against the exact log-det of the
    map it computed (``_quality.logdet_error``); ``None`` where not measured."""
    if not isinstance(c.module, torch.distributions.Transform):
        return None
    if torch.Size(w.event_shape).numel() > QUALITY_MAX_DIM:
        return None
    return logdet_error(c.module, x, PRECISION.get(c.name, "fp32"))

def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def table(result: dict) -> str:
    cols = [("train", "train steps/s"), ("log_prob", "log_prob /s"), ("sample", "sample /s"),
            ("log_prob_nograd", "log_prob no-grad /s"), ("sample_nograd", "sample no-grad /s")]
    head = (["contender", "params"] + [c[1] for c in cols]
            + ["train GFLOP/s (% matmul)", "saved act. MB", "step peak RSS MB (first)",
               "log-det error (nats)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    batch = result["workload"]["batch"]
    for n, c in result["contenders"].items():
        row = [n, f"{c['params']:,}"]
        for m, _ in cols:
            rate = (1 if m == "train" else batch) / c["median_s"][m]
            ratio = c["ratio_vs_pyro_flows"].get(m)
            row.append(_rate(rate) + ("" if n == REFERENCE or ratio is None else f" ({ratio:.2f}x)"))
        row.append(f"{c['train_gflops']:.1f} ({100 * c['train_gflops'] / result['matmul_gflops']:.0f}%)")
        row.append(f"{c['saved_activations_mb']:.1f}")
        mem = c["memory"]
        row.append(f"{mem['train_step_mb']:.0f} ({mem['first_step_mb']:.0f})" if "train_step_mb" in mem
                   else mem.get("error", "-"))
        err = c.get("logdet_error_nats")
        row.append("-" if err is None else f"{err:.1e}")
        lines.append("| " + " | ".join(row) + " |")
    lines.append(f"\nmatmul reference: {result['matmul_gflops']:.1f} GFLOP/s; (r x) = median per-round "
                 f"ratio of pyro-flows' speed to the contender's (> 1: pyro-flows faster); "
                 f"1-min load average over rounds {min(result['load_avg_1min']):.1f}-"
                 f"{max(result['load_avg_1min']):.1f}")
    for s, why in result["skipped"].items():
        lines.append(f"skipped {s}: {why}")
    for t in result.get("targets", []):
        best = t.get("ratio_of_best_rounds")
        verdict = "" if t["goal"] is None else (f" (goal >= {t['goal']}) "
                                                 f"{'MET' if t['met'] else 'MISSED'}")
        lines.append(f"ratio {t['what']}: {t['ratio']:.2f}{verdict}"
                     + (f"; ratio of best rounds {best:.2f}" if best is not None else ""))
    return "\n".join(lines)


def environment() -> dict:
    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    versions = {}
    for pkg in ("torch", "pyro-ppl", "zuko", "nflows", "normflows", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions}


def write_json(path: str, payload: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the results private to this user
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--rounds", type=int, help="rounds per workload (default: per workload)")
    p.add_argument("--quick", action="store_true", help="CI smoke: few rounds, short blocks")
    p.add_argument("--block", type=float, help="seconds per timed block (default 0.4, quick 0.05)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="measure peak RSS in subprocesses (default: on, off with --quick)")
    p.add_argument("--json", help="write all results to this file")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or process CPU time (all threads), which time slices lent "
                        "to other jobs do not inflate")
    p.add_argument("--threads", type=int, default=THREADS,
                   help=f"torch threads (default {THREADS}; 1 is less sensitive to a busy machine)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--compile", action="store_true",
                   help='log_prob under torch.compile(mode="reduce-overhead")')
    p.add_argument("--memory-probe", nargs=2, metavar=("CONTENDER", "WORKLOAD"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    torch.distributions.Distribution.set_default_validate_args(False)
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe)))
        return 0
    workloads = [s.strip() for s in args.workloads.split(",") if s.strip()]
    names = [s.strip() for s in args.contenders.split(",") if s.strip()]
    unknown = [x for x in workloads if x not in WORKLOADS] + [x for x in names if x not in CONTENDERS]
    if unknown:
        p.error(f"unknown workload/contender {unknown}; workloads: {', '.join(WORKLOADS)}; "
                f"contenders: {', '.join(CONTENDERS)}")
    if args.rounds is not None and args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    block = args.block or (0.05 if args.quick else 0.4)
    device = torch.device(args.device)
    # Peak RSS says nothing of GPU memory: the probe is for CPU runs.
    memory = (not args.quick and device.type == "cpu") if args.memory is None else args.memory
    env = environment()
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    env["device"], env["compile"] = str(device), args.compile
    print(f"{env['cpu']}, {env['nproc']} cores, {args.threads} threads, {args.clock} clock; "
          f"device {device}{' (' + env['gpu'] + ')' if 'gpu' in env else ''}"
          f"{', torch.compile' if args.compile else ''}; {env['versions']}", flush=True)
    t0 = time.perf_counter()
    results = []
    for name in workloads:
        rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)[name]
        results.append(run_workload(WORKLOADS[name], names, rounds, block, memory,
                                    CLOCKS[args.clock], device, args.compile))
    env["wall_seconds"] = time.perf_counter() - t0
    print(f"\ntotal {env['wall_seconds']:.0f} s")
    if args.json:
        write_json(args.json, {"argv": sys.argv, "environment": env, "block_s": block,
                               "clock": args.clock, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
