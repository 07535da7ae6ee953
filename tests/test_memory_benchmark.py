"""``benchmarks/memory.py``: the memory a training step adds is counted from the resident memory
after initialization, not from the peak reached before it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _memory_benchmark():
    path = ROOT / "benchmarks" / "memory.py"
    spec = importlib.util.spec_from_file_location("memory_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="resetting the peak needs Linux's /proc/self/clear_refs")
def test_peak_counts_from_the_restart_not_from_an_earlier_peak():
    """An earlier, larger peak (building and initializing the model) does not hide what the
    step adds: with the peak counted from before the step (``ru_maxrss``), a 16 MiB step after
    a 64 MiB peak added nothing."""
    memory = _memory_benchmark()
    earlier = torch.ones(64 * 2**20 // 4)  # written, so resident
    del earlier
    before = memory._restart_peak()
    step = torch.ones(16 * 2**20 // 4)
    added_mib = (memory._peak() - before) / 1024
    assert 12 <= added_mib <= 40, added_mib
    del step
