"""The ``pyro-flows`` command: fit a flow to data, sample from it, evaluate it.

::

    pyro-flows fit digits --flow glow --epochs 30 --out runs/digits
    pyro-flows sample runs/digits --n 64 --temperature 0.7 --out samples.png
    pyro-flows evaluate runs/digits

A run directory holds ``config.json`` (how to rebuild the model and reload the data),
``model.pt`` (the weights), ``checkpoint.pt`` (to resume), ``metrics.json``, ``loss.png`` and
``samples.png`` (images) or ``density.png`` (2-D data). It appears only once complete
(:mod:`pyro_flows.rundir`); Ctrl-C writes a checkpoint and prints the command that resumes.
Every error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from . import __version__, plots
from . import data as datasets
from .checkpoint import atomic_write, save_json, save_torch, strict_json
from .model import FlowModel
from .precision import PRECISIONS
from .registry import available
from .rundir import (AUTO_VARIATIONAL_MAX, CHECKPOINT, DEQUANTIZER, LOGIT_ALPHA, METRICS,
                     WEIGHTS, RunDirectory, build_model, check_data_source, check_device,
                     data_source, dequantization, evaluate, load_run, normalized, read_config)
from .training import NonFiniteTraining, TrainingInterrupted, fit

__all__ = ["evaluate", "load_run", "main"]


def _flow_kwargs(args: argparse.Namespace, image: bool) -> dict:
    """Architecture options of the registry builders, from the command line."""
    if image:
        return {"levels": args.levels, "steps": args.steps, "hidden_channels": args.hidden}
    return {"num_layers": args.layers, "hidden_dims": [args.hidden, args.hidden]}


# -- checks made before anything is written ------------------------------------------------
def _load_data(source: str, n_bits: int | None, seed: int) -> datasets.Splits:
    dataset = datasets.load(source, n_bits=n_bits, seed=seed)
    n = len(dataset.train) + len(dataset.val) + len(dataset.test)
    if not len(dataset.val) or not len(dataset.test):
        raise ValueError(f"{source} has {n} examples; fit needs at least 6, as it holds 10 % "
                         "out for validation and 10 % for testing: add examples")
    return dataset


def _resume_command(args: argparse.Namespace, out: Path) -> str:
    argv = [a for a in args.argv if a not in ("--overwrite", "--resume")]
    if args.out is None:
        argv += ["--out", str(out)]
    return shlex.join(["pyro-flows", *argv, "--resume"])


@contextlib.contextmanager
def _first_ctrl_c_asks_to_stop() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (training checkpoints and stops); a second one stops
    at once. Outside the main thread Python cannot handle signals: nothing changes there."""
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def handle(signum: int, frame: object) -> None:
        if asked.is_set():
            raise KeyboardInterrupt
        asked.set()

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)


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


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _fit(args: argparse.Namespace) -> dict:
    check_device(args.device)
    rank, args.device = _join_process_group(args.device)
    dataset = _load_data(args.data, args.n_bits, args.seed)
    image = dataset.kind == "image"
    run = RunDirectory(args.out or Path("runs") / f"{Path(dataset.name).stem}-{args.flow}")
    if rank == 0:
        run.recover()  # only undoes what a killed run left; the run itself is untouched
    _barrier()
    run.check_mode(args.resume, args.overwrite)
    config = normalized({
        **data_source(args.data), "n_bits": args.n_bits, "seed": args.seed, "flow": args.flow,
        "event_shape": list(dataset.event_shape), "levels": dataset.levels,
        "dequantization": dequantization(args.dequantization, dataset.event_shape),
        "flow_kwargs": _flow_kwargs(args, image),
        "logit_alpha": LOGIT_ALPHA, "dequantizer": DEQUANTIZER,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "warmup": args.warmup, "ema": args.ema, "precision": args.precision,
        "command": _resume_command(args, run.path)})
    if args.resume:
        previous = read_config(run.resume_source())
        ignored = {"epochs", "command"}
        changed = sorted(k for k in config if k not in ignored and k in previous
                         and previous[k] != config[k])
        if changed:
            raise ValueError(f"--resume with settings that differ from the run in {run.path}: "
                             f"{', '.join(changed)}; use the original ones, or --overwrite")
    torch.manual_seed(args.seed)
    try:
        model = build_model(config).to(args.device)
    except ValueError as error:
        raise ValueError(f"--levels {args.levels}: {error}" if args.levels else error) from None
    resume = args.resume and (run.resume_source() / CHECKPOINT).is_file()
    _barrier()  # every rank has validated everything before rank 0 writes
    if rank == 0:
        run.begin(config, resume=args.resume)
    _barrier()
    try:
        with _first_ctrl_c_asks_to_stop() as asked:
            history = fit(model, dataset.train, val_data=dataset.val, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                          patience=args.patience, checkpoint_dir=run.partial, resume=resume,
                          overwrite=True, seed=args.seed, progress=not args.quiet,
                          ema_decay=args.ema or None, precision=args.precision,
                          interrupt=asked.is_set)
    except TrainingInterrupted as stopped:
        raise ValueError(f"{stopped}; resume with: {config['command']}") from None
    except NonFiniteTraining as error:
        if rank == 0 and not args.resume and str(error).startswith("no step"):
            shutil.rmtree(run.partial)  # an untrained run: nothing worth resuming
        raise ValueError(_divergence_advice(error, args, dataset)) from None
    # Every rank holds the same weights; rank 0 reports. No rank leaves (and tears its gloo
    # connections down) before rank 0 has published: an early exit aborted rank 1 at shutdown.
    report = _finish(model, history, dataset, args, run) if rank == 0 else {}
    _barrier()
    return report


def _divergence_advice(error: NonFiniteTraining, args: argparse.Namespace,
                       dataset: datasets.Splits) -> str:
    what = ("no training step took effect" if str(error).startswith("no step")
            else f"training stopped after {error.consecutive} non-finite steps in a row")
    top = dataset.train.abs().max().item()
    data = f"; the data reach {top:.3g}: standardize them" if top > 1e4 else ""
    return (f"{what} ({error.skipped} skipped, non-finite loss or gradient){data}; try a "
            f"lower --lr (now {args.lr:g}) or a longer --warmup (now {args.warmup}), then "
            "rerun" + ("" if what.startswith("no") else " with --overwrite"))


def _finish(model: FlowModel, history, dataset: datasets.Splits, args: argparse.Namespace,
            run: RunDirectory) -> dict:
    """Score, draw and publish a trained run (rank 0)."""
    model.eval()
    metrics = evaluate(model, dataset.test, seed=args.seed)
    if not all(math.isfinite(v) for v in metrics.values()):
        raise ValueError(f"the trained model gives a non-finite test NLL ({metrics['test_nll']}): "
                         "nothing was published; try more --epochs, a lower --lr or a longer "
                         "--warmup, then rerun with --overwrite")
    save_torch(model.state_dict(), run.partial / WEIGHTS)
    metrics.update({
        "status": "ok", "val_nll": history.val_loss[-1] if history.val_loss else None,
        "train_nll": history.train_loss[-1], "epochs": len(history.train_loss),
        "steps": history.steps[-1], "skipped_steps": sum(history.skipped_steps),
        "seconds": round(sum(history.seconds), 1),  # every epoch, over resumes too
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "flow": args.flow, "data": dataset.name, "event_shape": list(dataset.event_shape),
        "levels": dataset.levels, "history": history.to_dict()})
    save_json(metrics, run.partial / METRICS)
    d = dataset.test[0].numel()
    per_dim = 1 / (d * math.log(2)) if dataset.levels else 1.0
    plots.loss_curve(history.to_dict(), run.partial / "loss.png", scale=per_dim,
                     unit="bits/dim" if dataset.levels else "nats per example")
    torch.manual_seed(args.seed)
    if dataset.kind == "image":
        plots.image_grid(model.sample(64, temperature=0.7).cpu(), run.partial / "samples.png",
                         dataset.levels, title=f"{args.flow} samples, T=0.7")
    elif dataset.event_shape == (2,):
        plots.density_plot(lambda x: model.log_prob(x.to(args.device)), dataset.test,
                           model.sample(2000).cpu(), run.partial / "density.png")
    run.publish()
    summary = f"test NLL {metrics['test_nll']:.4f} nats/example"
    if "test_bpd" in metrics:
        summary += f", {metrics['test_bpd']:.4f} bits/dim"
    print(f"{summary}; run written to {run.path}")
    return metrics


def _run_data(args: argparse.Namespace, config: dict) -> datasets.Splits:
    """The data of a run: ``--data`` if given, else the recorded source, checked unchanged."""
    if args.data is None:
        check_data_source(config, args.run_dir)
    source = args.data or config["data"]
    dataset = datasets.load(source, n_bits=config["n_bits"], seed=config["seed"])
    if tuple(dataset.event_shape) != tuple(config["event_shape"]):
        raise ValueError(f"{source} has examples of shape {tuple(dataset.event_shape)}, the "
                         f"model expects {tuple(config['event_shape'])}")
    return dataset


def _sample(args: argparse.Namespace) -> torch.Tensor:
    check_device(args.device)
    model, config = load_run(args.run_dir, args.device)
    drawable = len(config["event_shape"]) == 3 or config["event_shape"] == [2]
    default = Path(args.run_dir) / f"samples-T{args.temperature:g}.{'png' if drawable else 'npy'}"
    out = Path(args.out or default)
    if out.suffix not in (".npy", ".png"):
        raise ValueError(f"--out must end in .png or .npy, got {out}")
    torch.manual_seed(args.seed)
    samples = model.sample(args.n, temperature=args.temperature).cpu()
    if out.suffix == ".npy":
        atomic_write(out, lambda f: np.save(f, samples.numpy()))
    elif samples.dim() == 4:
        plots.image_grid(samples, out, config["levels"],
                         title=f"{config['flow']} samples, T={args.temperature:g}")
    elif samples.shape[-1] == 2:
        plots.density_plot(lambda x: model.log_prob(x.to(args.device)),
                           _run_data(args, config).test, samples, out)
    else:
        raise ValueError(f"cannot draw {tuple(samples.shape[1:])}-shaped samples; use --out "
                         "FILE.npy")
    print(f"{args.n} samples at temperature {args.temperature:g} written to {out}")
    return samples


def _evaluate(args: argparse.Namespace) -> dict:
    check_device(args.device)
    model, config = load_run(args.run_dir, args.device)
    dataset = _run_data(args, config)
    metrics = evaluate(model, dataset.test.to(args.device), seed=config["seed"])
    print(json.dumps(strict_json(metrics), allow_nan=False))
    return metrics


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except where the help says it already, or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        said = "default" in (action.help or "")
        quiet = action.default is None or action.default is False or said
        return action.help if quiet else super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and where help is."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: float, rule: str,
            below: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` above ``low`` and below ``below`` (``rule`` says so in
    words)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and low < value < below):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyro-flows", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    kw = {"formatter_class": _Formatter}
    pos_int, pos_float = _number(int, 0, "at least 1"), _number(float, 0, "a positive number")
    f = commands.add_parser("fit", help="fit a flow to data by maximum likelihood", **kw)
    f.add_argument("data", help=f"'digits', 'fashion-mnist', a 2-D toy "
                                f"({', '.join(datasets.TOYS)}) or a .npy/.npz/.csv file")
    f.add_argument("--flow", default="glow", help=f"a registered flow: {', '.join(available())}")
    f.add_argument("--epochs", type=pos_int, default=30,
                   help="epochs in all (with --resume: counting those already done)")
    f.add_argument("--batch-size", type=pos_int, default=64, help="examples per step")
    f.add_argument("--lr", type=pos_float, default=2e-3, help="Adam's learning rate")
    f.add_argument("--warmup", type=_number(int, -1, "at least 0"), default=200,
                   help="learning-rate warm-up steps")
    f.add_argument("--patience", type=pos_int, default=None,
                   help="early stopping patience (epochs); none: train all epochs")
    f.add_argument("--levels", type=pos_int, default=None,
                   help="scales L of an image flow (default: as many as the size allows, <= 3)")
    f.add_argument("--steps", type=pos_int, default=8, help="flow steps K per scale (images)")
    f.add_argument("--layers", type=pos_int, default=8, help="couplings of a vector flow")
    f.add_argument("--hidden", type=pos_int, default=64, help="hidden width (channels or units)")
    f.add_argument("--dequantization", choices=["auto", "uniform", "variational"],
                   default="auto", help="dequantization of discrete data (variational: a learned "
                   "noise distribution, Flow++; the bound is still on the discrete data). auto: "
                   f"variational for data of at most {AUTO_VARIATIONAL_MAX} values (digits), "
                   "uniform above (Fashion-MNIST), as measured in benchmarks/RESULTS.md")
    f.add_argument("--ema", type=_number(float, -5e-324, "in [0, 1)", below=1.0), default=0.999,
                   help="decay of the weight average used for validation, test and samples "
                   "(0: no averaging)")
    f.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16-mixed/fp16-mixed: conditioner networks in low precision, the "
                   "density still exact (faster for wide nets on AMX CPUs and GPUs)")
    f.add_argument("--n-bits", type=pos_int, default=None,
                   help="bits per value of a data file of integers (none: continuous data)")
    f.add_argument("--seed", type=int, default=0, help="seeds the split, weights and data order")
    f.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    f.add_argument("--out", default=None, help="run directory (default runs/DATA-FLOW)")
    f.add_argument("--resume", action="store_true", help="continue the run in --out")
    f.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(run=_fit)
    s = commands.add_parser("sample", help="draw samples from a fitted run", **kw)
    s.add_argument("run_dir", help="a run directory written by pyro-flows fit")
    s.add_argument("--n", type=pos_int, default=64, help="number of samples")
    s.add_argument("--temperature", type=pos_float, default=1.0,
                   help="scale of the base distribution (below 1: smoother samples)")
    s.add_argument("--seed", type=int, default=0, help="seeds the draw")
    s.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    s.add_argument("--data", default=None,
                   help="data for the 2-D density plot (default: the run's own)")
    s.add_argument("--out", default=None, help="a .png (grid or density plot) or a .npy file "
                   "(default: RUN_DIR/samples-T<temperature>.png, .npy for data that cannot be "
                   "drawn)")
    s.set_defaults(run=_sample)
    e = commands.add_parser("evaluate", help="test NLL and bits/dim of a fitted run", **kw)
    e.add_argument("run_dir", help="a run directory written by pyro-flows fit")
    e.add_argument("--data", default=None,
                   help="another data source of the same shape (default: the run's own)")
    e.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    e.set_defaults(run=_evaluate)
    for command in (f, s, e):
        # OpenMP threads wait for each other whenever one is descheduled: with another job on
        # the cores, `fit digits` ran 40x slower on 2 threads than on 1.
        command.add_argument("--threads", type=pos_int, default=None,
                             help="CPU threads for torch (default: torch's choice); use 1 on "
                                  "a machine busy with other jobs")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    threads = torch.get_num_threads()  # restored below, for a caller of main() in-process
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        args.run(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, ImportError,
            OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"pyro-flows {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pyro-flows {args.command}: error: interrupted; nothing was published (an "
              "unfinished fit continues with the same command plus --resume)", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
