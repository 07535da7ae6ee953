"""fit under torch.distributed: two CPU processes (gloo) launched by torch.distributed.run must
end with identical weights on both ranks and match one process trained on the same global
batches."""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

# Run by torch.distributed.run (every rank trains) and imported by the test (one process).
SCRIPT = textwrap.dedent('''
    import sys

    import pyro.distributions as dist
    import torch
    import torch.distributed

    import pyro_flows
    from pyro_flows.train import fit


    class Density(torch.nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            # ActNorm layers initialize from data; the extra parameter is never used, which
            # DDP must tolerate.
            self.flow = pyro_flows.build("glow", event_shape=(4,), num_layers=3, hidden_dims=[16])
            self.unused = torch.nn.Parameter(torch.zeros(3))
            # float64: just after ActNorm's data init some gradients are ~0, and Adam turns
            # float32 rounding there (which a different summation order changes, two ranks or
            # not) into steps of size lr; in float64 the comparison tests the maths.
            self.double()

        def log_prob(self, x):
            base = dist.Normal(x.new_zeros(4), 1.0).to_event(1)
            return dist.TransformedDistribution(base, [self.flow]).log_prob(x)


    def data():
        g = torch.Generator().manual_seed(3)
        x = torch.randn(200, 4, generator=g) @ torch.randn(4, 4, generator=g) + 2.0
        return x[:168].double(), x[168:].double()


    def train(model, checkpoint_dir=None):
        x, val = data()
        # 168 examples in global batches of 32: 5 full batches and one of 8 per epoch.
        return fit(model, x, epochs=2, batch_size=32, lr=5e-3, warmup_steps=3, val_data=val,
                   seed=4, checkpoint_dir=checkpoint_dir, progress=False)


    if __name__ == "__main__":
        torch.distributed.init_process_group("gloo")
        rank = torch.distributed.get_rank()
        # Rank 1 starts from other weights: fit must give it rank 0's.
        model = Density(seed=100 + rank)
        history = train(model, checkpoint_dir=sys.argv[1])
        torch.save({"state": model.state_dict(), "history": history.to_dict()},
                   f"{sys.argv[1]}/rank{rank}.pt")
        torch.distributed.destroy_process_group()
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_one_process(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    # (a) identical weights on both ranks, including ActNorm's data-dependent initialization.
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    for history in (r["history"] for r in ranks):
        history.pop("seconds")
    assert ranks[0]["history"] == ranks[1]["history"]

    # (b) one process on the same global batches, from rank 0's initial weights.
    job = runpy.run_path(str(script))
    single = job["Density"](seed=100)
    history = job["train"](single).to_dict()
    ddp = ranks[0]["history"]
    print("DDP train/val loss:", ddp["train_loss"], ddp["val_loss"])
    print("1-process         :", history["train_loss"], history["val_loss"])
    assert ddp["steps"] == history["steps"] == [6, 12]
    for key in ("train_loss", "val_loss"):
        assert ddp[key] == pytest.approx(history[key], abs=1e-7), key
    for key, value in single.state_dict().items():
        assert torch.allclose(value, ranks[0]["state"][key], rtol=0, atol=1e-7), key

    # Only rank 0 wrote a checkpoint, and it holds both ranks' random states.
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pt") == [
        "checkpoint.pt", "rank0.pt", "rank1.pt"]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["rng"]) == 2
