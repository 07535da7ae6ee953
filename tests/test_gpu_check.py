"""``benchmarks/gpu_check.sh --dry-run``: the GPU check's CPU path runs and writes its one
result file with every section."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # four Python processes, ~15-30 s; CI runs it
@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_check_dry_run_writes_every_section(tmp_path):
    pytest.importorskip("sklearn")  # the digits fit
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    result = tmp_path / "gpu_check.txt"
    assert result.exists(), done.stderr
    text = result.read_text()
    for section in ("## environment", "## tests", "## speed", "## digits fit", "## summary"):
        assert section in text, f"{section} missing:\n{text}"
    assert "passed" in text and "pyro-flows-bf16" in text and "digits fit check: OK" in text
    assert done.returncode == 0, text
    assert "status OK" in text
