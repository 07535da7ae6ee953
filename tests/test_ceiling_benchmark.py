"""``benchmarks/ceiling.py``: the conditioner networks alone, replayed with the shapes a training
step gave them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_replays_every_conditioner_call_of_a_step():
    """A glow8 step calls its 16 coupling networks (2 levels of 8 steps) once each; the script
    times the step, the networks alone, the rest alone and the reference, and reports the two
    ratios."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ceiling.py"), "--workload", "glow8",
         "--reference", "pyro-flows", "--rounds", "1", "--steps", "1"],
        capture_output=True, text=True, timeout=300, check=True, cwd=ROOT / "benchmarks")
    lines = done.stdout.splitlines()
    assert lines[0].startswith("glow8: 16 conditioner calls per step of pyro-flows")
    medians = next(line for line in lines if line.startswith("medians:"))
    step_ms = float(medians.split("step ")[1].split(" ms")[0])
    networks_ms = float(medians.split("networks alone ")[1].split(" ms")[0])
    rest_ms = float(medians.split("the rest alone ")[1].split(" ms")[0])
    assert 0 < networks_ms and 0 < rest_ms and 0 < step_ms
    ratios = next(line for line in lines if line.startswith("speed of pyro-flows over pyro-flows:"))
    assert float(ratios.rsplit(" ", 1)[1].rstrip("x")) > 0


def test_network_calls_record_input_and_output_shapes():
    """The recorded shapes are those of the conditioning half and of shift plus log-scale."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import ceiling
        from _contenders import WORKLOADS, build, make_data
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    w = WORKLOADS["glow8"]
    c = build("pyro-flows", w)
    calls = ceiling.network_calls(c, make_data(w, 1)[0][:4])
    shapes = [(ins[0], outs[0]) for _, ins, outs, _ in calls]
    # Level 1: 1x8x8 squeezed to 4x4x4, halves of 2 channels; level 2: 2 channels kept after the
    # split, squeezed to 8x2x2, halves of 4.
    assert shapes == [((4, 2, 4, 4), (4, 4, 4, 4))] * 8 + [((4, 4, 2, 2), (4, 8, 2, 2))] * 8
