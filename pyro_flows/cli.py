"""The ``pyro-flows`` command: fit a flow to data, sample from it, evaluate it.

::

    pyro-flows fit digits --flow glow --epochs 30 --out runs/digits
    pyro-flows sample runs/digits --n 64 --temperature 0.7 --out samples.png
    pyro-flows evaluate runs/digits

A run directory holds ``config.json`` (how to rebuild the model and reload the data),
``model.pt`` (the weights), ``checkpoint.pt`` (to resume), ``metrics.json``, ``loss.png`` and
``samples.png`` (images) or ``density.png`` (2-D data).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import data as datasets
from . import plots
from .checkpoint import atomic_write, save_json, save_torch
from .model import FlowModel
from .registry import available
from .train import fit

__all__ = ["evaluate", "main", "load_run"]

CONFIG, WEIGHTS, METRICS = "config.json", "model.pt", "metrics.json"


# -- building and reloading a run ---------------------------------------------------------
def _flow_kwargs(args: argparse.Namespace, image: bool) -> dict:
    """Architecture options of the registry builders, from the command line."""
    if image:
        return {"levels": args.levels, "steps": args.steps, "hidden_channels": args.hidden}
    return {"num_layers": args.layers, "hidden_dims": (args.hidden, args.hidden)}


def _build(config: dict) -> FlowModel:
    image = len(config["event_shape"]) == 3
    discrete = config["levels"] is not None
    try:
        return FlowModel.build(
            config["flow"], tuple(config["event_shape"]), data_levels=config["levels"],
            dequantization=config["dequantization"] if discrete else None,
            logit_alpha=0.05 if discrete else None, **config["flow_kwargs"])
    except TypeError as error:  # a plugin builder that takes other options
        kind = "image" if image else "vector"
        raise ValueError(f"transform {config['flow']!r} does not accept the {kind} options "
                         f"{sorted(config['flow_kwargs'])}: {error}") from error


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[FlowModel, dict]:
    """The trained model of a run directory and its config."""
    run = Path(run_dir)
    config_path, weights_path = run / CONFIG, run / WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {run} is not a finished pyro-flows run "
                                    f"(create one with `pyro-flows fit DATA --out {run}`)")
    try:
        config = json.loads(config_path.read_text())
        state = torch.load(weights_path, map_location=device, weights_only=True)
    except Exception as error:  # torch.load raises many kinds on a corrupt file
        raise ValueError(f"cannot read the run in {run} (corrupt or truncated?): "
                         f"{type(error).__name__}: {error}") from error
    model = _build(config).to(device)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{weights_path} does not match the model in {config_path}: "
                         f"{error}") from error
    return model.eval(), config


@torch.no_grad()
def evaluate(model: FlowModel, data: torch.Tensor, batch_size: int = 500, seed: int = 0) -> dict:
    """Mean test NLL in nats per example and, for discrete data, bits/dim. The dequantization
    noise is drawn from a fixed seed, so the same model and data give the same figures."""
    if len(data) == 0:
        raise ValueError("no examples to evaluate")
    device = model.base_loc.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        nll = torch.cat([-model.log_prob(b.to(device, model.base_loc.dtype))
                         for b in data.split(batch_size)])
    result = {"test_nll": nll.mean().item()}
    if model.preprocessing is not None:
        result["test_bpd"] = result["test_nll"] / (model.event_shape.numel() * math.log(2))
    return result


# -- the commands --------------------------------------------------------------------------
def _join_process_group(device: str) -> tuple[int, str]:
    """Under ``torchrun`` (``WORLD_SIZE > 1``): join the process group, NCCL with one GPU per
    local rank, gloo on CPUs. Returns this process's rank and device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return (dist.get_rank() if dist.is_initialized() else 0), device


def _fit(args: argparse.Namespace) -> dict:
    rank, args.device = _join_process_group(args.device)
    dataset = datasets.load(args.data, n_bits=args.n_bits, seed=args.seed)
    image = dataset.kind == "image"
    out = Path(args.out or Path("runs") / f"{Path(dataset.name).stem}-{args.flow}")
    if (out / CONFIG).exists() and not (args.resume or args.overwrite):
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, --overwrite "
                         f"to replace it, or choose another --out")
    if args.resume and not (out / CONFIG).exists():
        raise ValueError(f"--resume: {out} holds no run to continue")
    if dist.is_initialized():
        dist.barrier()  # every rank has checked --out before rank 0 writes into it
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "data": args.data, "n_bits": args.n_bits, "seed": args.seed, "flow": args.flow,
        "event_shape": list(dataset.event_shape), "levels": dataset.levels,
        "dequantization": args.dequantization, "flow_kwargs": _flow_kwargs(args, image),
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
    }
    if args.resume:
        previous = json.loads((out / CONFIG).read_text())
        changed = {k for k in config if k != "epochs" and previous.get(k) != config[k]}
        if changed:
            raise ValueError(f"--resume with settings that differ from the run in {out}: "
                             f"{sorted(changed)}")
    torch.manual_seed(args.seed)
    model = _build(config).to(args.device)
    if rank == 0:
        save_json(config, out / CONFIG)
    start = time.time()
    history = fit(model, dataset.train, val_data=dataset.val, epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                  patience=args.patience, checkpoint_dir=out, resume=args.resume,
                  overwrite=args.overwrite, seed=args.seed, progress=not args.quiet)
    if rank != 0:  # every rank holds the same weights; rank 0 reports
        return {}
    save_torch(model.state_dict(), out / WEIGHTS)
    model.eval()
    metrics = {**evaluate(model, dataset.test, seed=args.seed),
               "val_nll": history.val_loss[-1] if history.val_loss else None,
               "train_nll": history.train_loss[-1], "epochs": len(history.train_loss),
               "steps": history.steps[-1], "skipped_steps": sum(history.skipped_steps),
               "seconds": round(time.time() - start, 1),
               "num_parameters": sum(p.numel() for p in model.parameters()),
               "flow": args.flow, "data": dataset.name, "event_shape": list(dataset.event_shape),
               "levels": dataset.levels, "history": history.to_dict()}
    save_json(metrics, out / METRICS)
    d = dataset.test[0].numel()
    per_dim = 1 / (d * math.log(2)) if dataset.levels else 1.0
    plots.loss_curve(history.to_dict(), out / "loss.png", scale=per_dim,
                     unit="bits/dim" if dataset.levels else "nats per example")
    torch.manual_seed(args.seed)
    if image:
        plots.image_grid(model.sample(64, temperature=0.7).cpu(), out / "samples.png",
                         dataset.levels, title=f"{args.flow} samples, T=0.7")
    elif dataset.event_shape == (2,):
        plots.density_plot(lambda x: model.log_prob(x.to(args.device)), dataset.test,
                           model.sample(2000).cpu(), out / "density.png")
    summary = f"test NLL {metrics['test_nll']:.4f} nats/example"
    if "test_bpd" in metrics:
        summary += f", {metrics['test_bpd']:.4f} bits/dim"
    print(f"{summary}; run written to {out}")
    return metrics


def _sample(args: argparse.Namespace) -> torch.Tensor:
    model, config = load_run(args.run_dir, args.device)
    torch.manual_seed(args.seed)
    samples = model.sample(args.n, temperature=args.temperature).cpu()
    out = Path(args.out or Path(args.run_dir) / f"samples-T{args.temperature:g}.png")
    if out.suffix == ".npy":
        atomic_write(out, lambda f: np.save(f, samples.numpy()))
    elif out.suffix == ".png":
        if samples.dim() == 4:
            plots.image_grid(samples, out, config["levels"],
                             title=f"{config['flow']} samples, T={args.temperature:g}")
        elif samples.shape[-1] == 2:
            data = datasets.load(config["data"], n_bits=config["n_bits"], seed=config["seed"])
            plots.density_plot(lambda x: model.log_prob(x.to(args.device)), data.test,
                               samples, out)
        else:
            raise ValueError(f"cannot draw {tuple(samples.shape[1:])}-shaped samples; use --out "
                             f"FILE.npy")
    else:
        raise ValueError(f"--out must end in .png or .npy, got {out}")
    print(f"{args.n} samples at temperature {args.temperature:g} written to {out}")
    return samples


def _evaluate(args: argparse.Namespace) -> dict:
    model, config = load_run(args.run_dir, args.device)
    source = args.data or config["data"]
    dataset = datasets.load(source, n_bits=config["n_bits"], seed=config["seed"])
    if tuple(dataset.event_shape) != tuple(config["event_shape"]):
        raise ValueError(f"{source} has examples of shape {tuple(dataset.event_shape)}, the "
                         f"model expects {tuple(config['event_shape'])}")
    metrics = evaluate(model, dataset.test.to(args.device), seed=config["seed"])
    print(json.dumps(metrics))
    return metrics


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-flows", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    f = commands.add_parser("fit", help="fit a flow to data by maximum likelihood")
    f.add_argument("data", help=f"'digits', 'fashion-mnist', a 2-D toy "
                                f"({', '.join(datasets.TOYS)}) or a .npy/.npz/.csv file")
    f.add_argument("--flow", default="glow", help=f"a registered flow: {', '.join(available())}")
    f.add_argument("--epochs", type=int, default=30)
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--warmup", type=int, default=200, help="learning-rate warm-up steps")
    f.add_argument("--patience", type=int, default=None, help="early stopping patience (epochs)")
    f.add_argument("--levels", type=int, default=None, help="scales L of an image flow")
    f.add_argument("--steps", type=int, default=8, help="flow steps K per scale (images)")
    f.add_argument("--layers", type=int, default=8, help="couplings of a vector flow")
    f.add_argument("--hidden", type=int, default=64, help="hidden width (channels or units)")
    f.add_argument("--dequantization", choices=["uniform", "variational"], default="uniform")
    f.add_argument("--n-bits", type=int, default=None, help="bits per value of a data file")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="cpu")
    f.add_argument("--out", default=None, help="run directory (default runs/DATA-FLOW)")
    f.add_argument("--resume", action="store_true", help="continue the run in --out")
    f.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(run=_fit)
    s = commands.add_parser("sample", help="draw samples from a fitted run")
    s.add_argument("run_dir")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--out", default=None, help="a .png (grid or density plot) or a .npy file")
    s.set_defaults(run=_sample)
    e = commands.add_parser("evaluate", help="test NLL and bits/dim of a fitted run")
    e.add_argument("run_dir")
    e.add_argument("--data", default=None, help="another data source of the same shape")
    e.add_argument("--device", default="cpu")
    e.set_defaults(run=_evaluate)
    for command in (f, s, e):
        # OpenMP threads wait for each other whenever one is descheduled: with another job on
        # the cores, `fit digits` ran 40x slower on 2 threads than on 1.
        command.add_argument("--threads", type=_positive_int, default=None,
                             help="CPU threads for torch (default: torch's choice); use 1 on "
                                  "a machine busy with other jobs")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        args.run(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, ImportError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"pyro-flows {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
