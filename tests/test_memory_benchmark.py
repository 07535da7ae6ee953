"""``benchmarks/memory.py``: the memory a training step adds is counted from the resident memory
after initialization, not from the peak reached before it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh process, as memory.py runs each measurement: in this one, freed memory that
# earlier tests left resident would take the allocations without the resident size moving.
PROBE = """
import importlib.util, json, sys
import torch
spec = importlib.util.spec_from_file_location("memory_benchmark", sys.argv[1])
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)
earlier = torch.ones(64 * 2**20 // 4)  # written, so resident
del earlier
before = memory._restart_peak()
step = torch.ones(16 * 2**20 // 4)
print(json.dumps((memory._peak() - before) / 1024))
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="resetting the peak needs Linux's /proc/self/clear_refs")
def test_peak_counts_from_the_restart_not_from_an_earlier_peak():
    """An earlier, larger peak (building and initializing the model) does not hide what the
    step adds: with the peak counted from before the step (``ru_maxrss``), a 16 MiB step after
    a 64 MiB peak added nothing."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "benchmarks" / "memory.py")],
                          capture_output=True, text=True, timeout=120, check=True)
    added_mib = json.loads(done.stdout.strip().splitlines()[-1])
    assert 12 <= added_mib <= 40, added_mib
