"""A run directory of the ``pyro-flows`` command, kept as a transaction.

A run is built in a sibling ``.NAME.partial`` directory, where its checkpoints make it
resumable, and published by renaming it to ``NAME`` only once complete: a crash can leave an
unfinished run beside the directory, never a mixed one in it. Replacing a run renames the old
one to ``.NAME.old`` first and deletes it after; :meth:`RunDirectory.recover` finishes or undoes
a publish that a crash cut between the two renames. The config records where the data came
from (an absolute path and its SHA-256 for a file), so a run can be used from any directory
and refuses a data file that has changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from . import data as datasets
from .checkpoint import atomic_write, remove_stale_temp_files, save_json
from .model import FlowModel
from .transforms.multiscale import max_levels

__all__ = ["AUTO_VARIATIONAL_MAX", "CONFIG", "DEQUANTIZER", "LOGIT_ALPHA", "METRICS", "WEIGHTS",
           "RunDirectory", "build_model", "check_data_source", "check_device", "data_source",
           "dequantization", "evaluate", "load_run", "normalized", "read_config"]

CONFIG, WEIGHTS, METRICS = "config.json", "model.pt", "metrics.json"
#: The preprocessing of discrete data in new runs (``benchmarks/quality.py``: with variational
#: dequantization and weight averaging, 1.91 test bits/dim on digits instead of 2.11). Runs
#: written before these were recorded used alpha 0.05 and the dequantizer's defaults.
LOGIT_ALPHA, DEQUANTIZER = 0.01, {"hidden_dims": [64, 64]}
#: The largest datum (in values) that ``--dequantization auto`` dequantizes variationally. The
#: dequantizer is a dense conditional flow over the whole datum, so it grows with its square:
#: +10% parameters on digits (64 values), where it gained 0.13 bits/dim, +60% on Fashion-MNIST
#: (784), where it gained nothing clear (benchmarks/RESULTS.md).
AUTO_VARIATIONAL_MAX = 256
CHECKPOINT = "checkpoint.pt"
#: What a config must hold to rebuild the model and reload the data.
REQUIRED = ("data", "n_bits", "seed", "flow", "event_shape", "levels", "dequantization",
            "flow_kwargs")
_NAMED = {*datasets.TOYS, "digits", "fashion_mnist"}


def normalized(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as it reads back from JSON (tuples become lists...), so that the config of a
    run compares equal to the one it was written from.

    >>> normalized({"hidden_dims": (64, 64)})
    {'hidden_dims': [64, 64]}
    """
    return json.loads(json.dumps(config, allow_nan=False))


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_source(source: str) -> dict[str, Any]:
    """How a config records ``source``: a data set's name, or a file's absolute path and hash."""
    if source.lower().replace("-", "_") in _NAMED or not os.path.isfile(source):
        return {"data": source, "data_sha256": None}
    return {"data": os.path.abspath(source), "data_sha256": _sha256(source)}


def check_data_source(config: dict[str, Any], run: str | os.PathLike) -> None:
    """Refuse a recorded data file that has moved or changed since the run was trained."""
    path, digest = config["data"], config.get("data_sha256")
    if digest is None:
        return
    if not os.path.isfile(path):
        raise ValueError(f"the data file of {run}, {path}, is gone (moved or deleted); put it "
                         f"back or pass --data WHERE_IT_IS_NOW")
    if _sha256(path) != digest:
        raise ValueError(f"the data file of {run}, {path}, has changed since the run was "
                         f"trained (SHA-256 differs); restore it, or pass --data {path} to use "
                         f"it as it is now")


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The config of a run, or an error naming what is wrong with it."""
    path = Path(directory) / CONFIG
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-create the run with "
                         f"`pyro-flows fit ... --overwrite`") from None
    missing = [k for k in REQUIRED if not isinstance(config, dict) or k not in config]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)} (edited, or written by another "
                         f"version?); re-create the run with `pyro-flows fit ... --overwrite`")
    return config


class RunDirectory:
    """The published run ``path``, its unfinished sibling and the leftovers of a publish.

    >>> run = RunDirectory("runs/moons")
    >>> run.partial.name, run.state()
    ('.moons.partial', 'absent')
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.partial = self.path.parent / f".{self.path.name}.partial"
        self.old = self.path.parent / f".{self.path.name}.old"

    def check_mode(self, resume: bool, overwrite: bool) -> None:
        """Refuse, before anything is written, a ``--resume``/``--overwrite`` choice that does
        not fit what the directory holds, naming the fix."""
        run, state = self, self.state()
        if resume and overwrite:
            raise ValueError("--resume continues a run and --overwrite replaces it: pass one")
        if state == "foreign":
            what = "a file" if run.path.is_file() else "a directory holding other files"
            raise ValueError(f"--out {run.path} is {what}, not a pyro-flows run; choose another "
                             "--out")
        if resume and state in ("absent", "empty"):
            raise ValueError(f"--resume: {run.path} holds no run to continue; drop --resume")
        if resume and state == "finished" and not (run.path / CHECKPOINT).is_file():
            raise ValueError(f"--resume: {run.path} has no {CHECKPOINT} to continue from")
        if not (resume or overwrite) and state == "finished":
            raise ValueError(f"{run.path} already holds a run; pass --resume to continue it, "
                             "--overwrite to replace it, or choose another --out")
        if not (resume or overwrite) and state == "unfinished":
            what = ("a finished run and an unfinished one" if (run.path / CONFIG).is_file()
                    else "an unfinished run")
            raise ValueError(f"{run.path} holds {what} (interrupted); pass --resume to continue "
                             "the unfinished run or --overwrite to start afresh")

    def state(self) -> str:
        """``"unfinished"`` (a resumable partial run exists), ``"finished"``, ``"foreign"``
        (a file, or a directory holding other things), ``"empty"`` or ``"absent"``."""
        if (self.partial / CONFIG).is_file():
            return "unfinished"
        if (self.path / CONFIG).is_file() or (self.old / CONFIG).is_file():
            return "finished"
        if self.path.is_dir():
            return "empty" if not any(self.path.iterdir()) else "foreign"
        return "foreign" if self.path.exists() else "absent"

    def recover(self) -> None:
        """Finish or undo a publish cut short, and delete the temporary files of writes cut
        short (call on one process only, before anything is written)."""
        if self.old.is_dir():
            if self.path.exists():
                shutil.rmtree(self.old)
            else:
                os.rename(self.old, self.path)
        for directory in (self.path, self.partial):
            remove_stale_temp_files(directory)
        if self.partial.is_dir() and not (self.partial / CONFIG).is_file():
            shutil.rmtree(self.partial)  # killed before its config was written: nothing in it

    def begin(self, config: dict[str, Any], resume: bool) -> None:
        """Make the partial directory to train in: kept (``resume`` of an unfinished run),
        seeded with the published run's checkpoint (``resume`` of a finished one) or new. The
        config is ``config`` in every case: a resume may change ``epochs`` (and so the command)."""
        if resume and (self.partial / CONFIG).is_file():
            save_json(config, self.partial / CONFIG)
            return
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        if resume:
            source = self.path / CHECKPOINT
            atomic_write(self.partial / CHECKPOINT,
                         lambda f: f.write(source.read_bytes()))
        save_json(config, self.partial / CONFIG)

    def resume_source(self) -> Path:
        """Where ``--resume`` continues from: the unfinished run, else the finished one."""
        return self.partial if (self.partial / CONFIG).is_file() else self.path

    def publish(self) -> None:
        """Make the partial run the run, replacing any previous one."""
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()
        elif self.path.exists():
            os.rename(self.path, self.old)
        os.rename(self.partial, self.path)
        if self.old.exists():
            shutil.rmtree(self.old)
        _fsync_directory(self.path.parent)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dequantization(choice: str, event_shape) -> str:
    """The dequantization a run records for the command line's ``choice``, ``"auto"`` resolved:
    variational up to :data:`AUTO_VARIATIONAL_MAX` values per datum, uniform above."""
    if choice != "auto":
        return choice
    return "variational" if math.prod(event_shape) <= AUTO_VARIATIONAL_MAX else "uniform"


def check_device(name: str) -> None:
    """Refuse a device (the command line's ``--device``) that torch does not know or this
    machine does not have, naming the fix."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device torch knows; use cpu, cuda or "
                         "cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch has no CUDA support or sees no GPU; "
                         "use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")


def build_model(config: dict) -> FlowModel:
    """The untrained model a config describes."""
    shape = tuple(config["event_shape"])
    discrete = config["levels"] is not None
    try:
        return FlowModel.build(
            config["flow"], shape, data_levels=config["levels"],
            dequantization=config["dequantization"] if discrete else None,
            logit_alpha=config.get("logit_alpha", 0.05) if discrete else None,
            dequantizer=config.get("dequantizer"), **config["flow_kwargs"])
    except TypeError as error:  # a plugin builder that takes other options
        kind = "image" if len(shape) == 3 else "vector"
        raise ValueError(f"transform {config['flow']!r} does not accept the {kind} options "
                         f"{sorted(config['flow_kwargs'])}: {error}") from error
    except ValueError as error:
        if len(shape) == 3 and max_levels(shape) == 0:
            _, h, w = shape
            raise ValueError(f"{config['flow']} halves the image height and width, and "
                             f"{h}x{w} images cannot be halved; pad or crop them to even sizes "
                             f"(e.g. {h + h % 2}x{w + w % 2})") from error
        raise


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[FlowModel, dict]:
    """The trained model of a run directory and its config."""
    run = RunDirectory(run_dir)
    if not run.path.exists() and (run.old / CONFIG).is_file():
        run.path = run.old  # a publish was cut between its renames: the old run is whole
    elif not (run.path / CONFIG).is_file() and run.state() == "unfinished":
        command = read_config(run.partial).get("command", "pyro-flows fit ...")
        raise FileNotFoundError(f"{run.path} holds no finished run: its training was "
                                f"interrupted; continue it with `{command}`")
    for path in (run.path / CONFIG, run.path / WEIGHTS):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {run.path} is not a finished "
                                    f"pyro-flows run (create one with `pyro-flows fit DATA "
                                    f"--out {run.path}`)")
    config = read_config(run.path)
    try:
        state = torch.load(run.path / WEIGHTS, map_location=device, weights_only=True)
    except Exception as error:  # torch.load raises many kinds on a corrupt file
        raise ValueError(f"cannot read the run in {run.path} (corrupt or truncated?): "
                         f"{type(error).__name__}: {error}; re-create it with `pyro-flows fit "
                         "... --overwrite`") from error
    model = build_model(config).to(device)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{run.path / WEIGHTS} does not match the model in its "
                         f"{CONFIG}: {error}") from error
    return model.eval(), config


@torch.no_grad()
def evaluate(model: FlowModel, data: torch.Tensor, batch_size: int = 500, seed: int = 0) -> dict:
    """Mean test NLL in nats per example and, for discrete data, bits/dim. The dequantization
    noise is drawn from a fixed seed, so the same model and data give the same figures."""
    if len(data) == 0:
        raise ValueError("no examples to evaluate")
    device = model.base_loc.device
    cuda = device.type == "cuda"
    # Seeds only the generators that fork_rng restores (torch.manual_seed would reseed every
    # GPU's, which a CPU model's evaluation must not touch).
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        nll = torch.cat([-model.log_prob(b.to(device, model.base_loc.dtype))
                         for b in data.split(batch_size)])
    result = {"test_nll": nll.mean().item()}
    if model.preprocessing is not None:
        result["test_bpd"] = result["test_nll"] / (model.event_shape.numel() * math.log(2))
    return result
