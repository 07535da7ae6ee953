"""How fast a training step could be if everything but its conditioner networks were free.

    python benchmarks/ceiling.py [--workload glow32] [--contender pyro-flows]
                                 [--reference normflows] [--rounds 5] [--steps 3] [--threads 1]

A coupling flow's training step is its conditioner networks, forward and backward, plus the rest:
the coupling arithmetic, ActNorm, the 1x1 convolutions, squeezes, priors and Adam. This script
times four things, interleaved round by round in one process, on the process CPU clock:

* the contender's training step (``speed.train_step``);
* its conditioner networks alone: every call the step makes to a network (a ``ConvNet`` or a
  Pyro ``DenseNN``), in the step's order, forward on a random input of the shape it saw in the
  step and backward with a random gradient of its output's shape;
* the rest alone: the same training step with every network replaced by a stand-in that costs
  nothing (zeros of the network's output shape, still on the graph);
* the reference's training step.

The reference's step time over the networks' time is the highest speed ratio the contender could
reach against that reference with its networks as they are, were the rest free. The step less
the networks and the rest is what the two cost together beyond their sum (memory that is fresh
in a whole step but reused when one network runs alone, caches). Medians over rounds are
printed. The ``-bf16`` contenders replay their networks under
``pyro_flows.precision.autocast("bf16-mixed")``, as their steps run them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from pyro.nn import ConditionalDenseNN, DenseNN

from pyro_flows.nn import ConvNet
from pyro_flows.precision import autocast
from pyro_flows.train import adam

from _contenders import CONTENDERS, WORKLOADS, Contender, build, make_data
from speed import LR, train_step

__all__ = ["main", "network_calls"]

NETWORKS = (ConvNet, DenseNN, ConditionalDenseNN)


def network_calls(c: Contender,
                  x: torch.Tensor) -> list[tuple[torch.nn.Module, tuple, tuple, bool]]:
    """``(network, input shapes, output shapes, whether it returned a tuple)`` of each
    conditioner call in one training step on ``x``, in the order of the step's forward pass."""
    calls = []

    def record(net: torch.nn.Module, inputs: tuple, output) -> None:
        many = isinstance(output, (tuple, list))
        outputs = output if many else (output,)
        # A missing context is passed as None, and passed again as None.
        calls.append((net, tuple(None if t is None else t.shape for t in inputs),
                      tuple(t.shape for t in outputs), many))

    nets = [m for m in c.module.modules() if isinstance(m, NETWORKS)]
    if not nets:
        raise SystemExit(f"{c.name} has no ConvNet or DenseNN conditioners to time")
    hooks = [net.register_forward_hook(record) for net in nets]
    try:
        opt = adam(list(c.module.parameters()), LR)
        train_step(c, opt, x)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _networks_alone(calls: list[tuple[torch.nn.Module, tuple, tuple, bool]],
                    bf16_mixed: bool) -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)
    work = [(net, [None if s is None else torch.randn(s, generator=g).requires_grad_() for s in ins],
             [torch.randn(s, generator=g) for s in outs]) for net, ins, outs, _ in calls]

    def run() -> None:
        for net, inputs, grads in work:
            # The -bf16 contenders run their log-density under autocast, so their networks too.
            with autocast("bf16-mixed" if bf16_mixed else "fp32"):
                out = net(*inputs)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            torch.autograd.backward(outs, [g.to(o.dtype) for o, g in zip(outs, grads)])
            for t in inputs:
                if t is not None:
                    t.grad = None
        for net, _, _ in work:
            net.zero_grad(set_to_none=True)

    return run


@contextmanager
def _free_networks(calls: list[tuple[torch.nn.Module, tuple, tuple, bool]]) -> Iterator[None]:
    """Within it, each network of ``calls`` returns zeros of the shapes it gave there (the
    coupling is then the identity), kept on the graph through one entry of its input and of
    each of its parameters."""
    shapes = {(id(net), ins[0]): (outs, many) for net, ins, outs, many in calls}
    nets = {id(net): net for net, *_ in calls}

    def stand_in(net: torch.nn.Module) -> Callable[..., Any]:
        def forward(x: torch.Tensor, *context: torch.Tensor | None):
            outs, many = shapes[id(net), x.shape]
            # Every parameter gets a (zero) gradient, so Adam's step is the real one.
            touched = [x, *net.parameters()]
            on_graph = 0 * sum(t[(0,) * t.dim()] for t in touched)  # one entry, no copy
            zeros = [torch.zeros(s, dtype=x.dtype) + on_graph for s in outs]
            return tuple(zeros) if many else zeros[0]
        return forward

    for net in nets.values():
        net.forward = stand_in(net)  # an instance attribute, over the class's method
    try:
        yield
    finally:
        for net in nets.values():
            del net.forward


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="glow32", choices=sorted(WORKLOADS))
    p.add_argument("--contender", default="pyro-flows", choices=CONTENDERS)
    p.add_argument("--reference", default="normflows", choices=CONTENDERS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if min(args.rounds, args.steps, args.threads) < 1:
        p.error("--rounds, --steps and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    torch.distributions.Distribution.set_default_validate_args(False)
    w = WORKLOADS[args.workload]
    data = make_data(w, 4)
    contender, reference = build(args.contender, w), build(args.reference, w)
    calls = network_calls(contender, data[0])
    print(f"{args.workload}: {len(calls)} conditioner calls per step of {args.contender}; "
          f"{args.threads} thread(s), process CPU time")
    contender_opt = adam(list(contender.module.parameters()), LR)
    reference_opt = adam(list(reference.module.parameters()), LR)
    run_networks = _networks_alone(calls, args.contender.endswith("-bf16"))

    def rest_alone(i: int) -> None:
        with _free_networks(calls):
            train_step(contender, contender_opt, data[i % 4])

    measures = {
        f"{args.contender} step": lambda i: train_step(contender, contender_opt, data[i % 4]),
        "its networks alone": lambda i: run_networks(),
        "the rest alone": rest_alone,
        f"reference {args.reference} step": lambda i: train_step(reference, reference_opt,
                                                                 data[i % 4]),
    }
    times: dict[str, list[float]] = {name: [] for name in measures}
    for fn in measures.values():  # warm-up: Adam state, ActNorm initialization, allocator
        for i in range(2):
            fn(i)
    for r in range(args.rounds):
        for name, fn in measures.items():
            t0 = time.process_time()
            for i in range(args.steps):
                fn(i)
            times[name].append((time.process_time() - t0) / args.steps)
        print(f"  round {r + 1}/{args.rounds}: "
              + ", ".join(f"{name} {1e3 * t[-1]:.0f} ms" for name, t in times.items()), flush=True)
    step, nets, rest, ref = (statistics.median(t) for t in times.values())
    result = {"step_ms": 1e3 * step, "networks_ms": 1e3 * nets, "rest_ms": 1e3 * rest,
              "reference_ms": 1e3 * ref, "ratio": ref / step, "ceiling": ref / nets}
    print(f"medians: step {result['step_ms']:.0f} ms = networks alone {result['networks_ms']:.0f} ms "
          f"({100 * nets / step:.0f} %) + the rest alone {result['rest_ms']:.0f} ms "
          f"({100 * rest / step:.0f} %) + {1e3 * (step - nets - rest):.0f} ms together; "
          f"{args.reference} {result['reference_ms']:.0f} ms\n"
          f"speed of {args.contender} over {args.reference}: {result['ratio']:.2f}x; with everything "
          f"but the networks free it would be {result['ceiling']:.2f}x")
    return result


if __name__ == "__main__":
    main()
