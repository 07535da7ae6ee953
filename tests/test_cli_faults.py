"""Fault injection (slow): ``kill -9`` a real ``pyro-flows fit`` at random moments, half of
them the moment a file is being written or a run published. After every kill the run
directory must be readable or refused with a clear message, and resuming must end with the
weights of an uninterrupted run, byte for byte."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyro_flows.cli import main
from pyro_flows.rundir import RunDirectory

ARGV = ["fit", "two_moons", "--flow", "realnvp", "--epochs", "6", "--layers", "2", "--hidden",
        "8", "--batch-size", "512", "--quiet", "--threads", "1"]
KILLS = 24


def start(out: Path, *flags: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "pyro_flows.cli", *ARGV, "--out", str(out),
                             *flags], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def writing(run: RunDirectory) -> bool:
    """Whether a temporary file is being written or a publish is under way."""
    if run.old.exists():
        return True
    return any(p.name.endswith(".tmp") for d in (run.path, run.partial) if d.is_dir()
               for p in d.iterdir())


def kill_during_write(job: subprocess.Popen, run: RunDirectory, patience: float) -> bool:
    deadline = time.time() + patience
    while time.time() < deadline and job.poll() is None:
        if writing(run):
            job.kill()
            return True
    return False


@pytest.mark.slow
def test_kill_9_never_loses_or_mixes_a_run(tmp_path, capsys):
    reference = tmp_path / "reference"
    done = start(reference)
    assert done.wait(timeout=120) == 0, done.stderr.read()
    began = time.time()
    assert start(tmp_path / "timing").wait(timeout=120) == 0
    duration = time.time() - began

    rng = random.Random(0)
    run = RunDirectory(tmp_path / "run")
    kills = during_writes = readable = refused = 0
    while kills < KILLS:
        state = run.state()
        flags = [] if state == "absent" else ["--resume"]
        if state == "finished" and rng.random() < 0.5:
            flags = ["--overwrite"]
        job = start(run.path, *flags)
        if kills % 2:
            killed = kill_during_write(job, run, patience=duration * 1.5)
            during_writes += killed
        else:
            try:
                job.wait(timeout=rng.uniform(0.0, duration * 1.2))
                killed = False
            except subprocess.TimeoutExpired:
                job.kill()
                killed = True
        job.wait()
        if not killed:
            assert job.returncode == 0, job.stderr.read()
            continue
        kills += 1
        code = main(["evaluate", str(run.path)])
        err = capsys.readouterr().err
        if code == 0:
            readable += 1
        else:
            assert code == 2 and err.count("\n") == 1, err
            assert "holds no finished run" in err or "is missing" in err, err
            refused += 1

    final = start(run.path, "--resume")
    assert final.wait(timeout=120) == 0, final.stderr.read()
    assert (run.path / "model.pt").read_bytes() == (reference / "model.pt").read_bytes()
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (run.path, reference)]
    assert metrics[0]["test_nll"] == metrics[1]["test_nll"]
    assert metrics[0]["history"]["train_loss"] == metrics[1]["history"]["train_loss"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")]
    assert not leftovers and not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]
    print(f"\n{kills} kills ({during_writes} during a write or publish): {readable} left a "
          f"readable run, {refused} a clearly refused one; one run takes {duration:.1f} s")
    assert during_writes >= 5
