"""Maximum-likelihood training of a flow: :func:`fit`, Adam with what flows need on top.

Linear learning-rate warm-up (Glow at full rate can reach NaN in its first steps: Kingma &
Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018), gradient
clipping, a guard that skips non-finite steps and rolls back, validation with early stopping,
atomic checkpoints with exact resumption, and DistributedDataParallel under ``torchrun``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import Dataset, IterableDataset
from tqdm import tqdm

from .checkpoint import load_checkpoint, rng_state, save_torch, set_rng_state
from .init import initialize

__all__ = ["CHECKPOINT_NAME", "History", "adam", "fit", "linear_warmup"]

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = 1  # bump when the checkpoint layout changes


@dataclass
class History:
    """What :func:`fit` measured, one entry per epoch (``to_dict()`` is JSON-ready).

    :ivar train_loss: mean negative log-likelihood (nats per example) over the epoch's steps.
    :ivar val_loss: mean NLL on ``val_data`` after the epoch (empty without ``val_data``).
    :ivar val_bits_per_dim: ``val_loss`` in bits per dimension, ``/ (D ln 2)`` (empty unless
        the model has a ``bits_per_dim`` method, as :class:`~pyro_flows.FlowModel` does, and
        ``val_data`` is given).
    :ivar lr: learning rate at the end of the epoch.
    :ivar steps: optimizer steps in effect at the end of the epoch (rolled-back ones excluded).
    :ivar skipped_steps: steps skipped by the non-finite guard during the epoch.
    :ivar seconds: wall-clock duration of the epoch.
    :ivar stopped_early: whether ``patience`` ended the training.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_bits_per_dim: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def best_epoch(self) -> int | None:
        """Index of the epoch with the lowest finite validation loss (``None`` if none)."""
        finite = [(v, i) for i, v in enumerate(self.val_loss) if math.isfinite(v)]
        return min(finite)[1] if finite else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "History":
        return cls(**d)


_FUSED_DEVICES = ("cpu", "cuda")


def adam(params: list[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel where every parameter is a float on a device that has one
    (CPU, CUDA), else the default implementation. One kernel for all parameters instead of a
    dozen small ops per tensor: 9 % of a tab64 training step on 2 CPU threads.

    torch's fused kernel reads a parameter, its gradient and its Adam state as if they shared
    one memory layout, and silently mixes elements up when they do not. Loading a state saved
    with another layout (before a weight went channels-last) or without the fused kernel
    therefore re-lays every state tensor like its parameter and keeps the kernel on.

    >>> adam([torch.zeros(1, requires_grad=True)], lr=1e-3).defaults["fused"]
    True
    """
    params = list(params)
    if not all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params):
        return torch.optim.Adam(params, lr=lr)
    optimizer = torch.optim.Adam(params, lr=lr, fused=True)
    optimizer.register_load_state_dict_post_hook(_keep_fused_layout)
    return optimizer


def _keep_fused_layout(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        group["fused"] = True
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for name, value in state.items():
                if name == "step":  # the fused kernel wants it as a float on p's device
                    state[name] = value.to(device=p.device, dtype=torch.float32)
                elif torch.is_tensor(value) and value.shape == p.shape:
                    if value.stride() != p.stride():
                        state[name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """Scale the learning rate by ``min(1, (k + 1) / warmup_steps)`` at step ``k`` (from 0), so
    the first step already moves; ``warmup_steps=0`` means no warm-up.

    >>> opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0)
    >>> sched, lrs = linear_warmup(opt, 4), []
    >>> for _ in range(5):
    ...     lrs.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
    >>> lrs
    [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / warmup_steps) if warmup_steps else 1.0)


class _Data:
    """Training or validation examples, a Tensor ``(N, ...)`` or a map-style Dataset whose
    items are tensors or tuples starting with one (as ``TensorDataset`` gives)."""

    def __init__(self, data: torch.Tensor | Dataset, name: str) -> None:
        self.name = name
        self.tensor = data if isinstance(data, torch.Tensor) else None
        map_style = isinstance(data, Dataset) and not isinstance(data, IterableDataset)
        self.dataset = data if map_style else None
        if self.tensor is None and self.dataset is None:
            hint = " (for pyro_flows.data.Splits pass .train, and val_data=.val)" if hasattr(
                data, "train") else ""
            raise TypeError(f"{name} must be a Tensor (N, ...) or a map-style Dataset, got "
                            f"{type(data).__name__}{hint}")
        if self.tensor is not None and self.tensor.dim() == 0:
            raise ValueError(f"{name} must have a leading example dimension, got a scalar")
        self.size = len(data)
        if self.size == 0:
            raise ValueError(f"{name} is empty: there is nothing to train or validate on")
        first = self.tensor[:1] if self.tensor is not None else self._item(0)[None]
        if first.is_complex() or first.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers (floating point, or integers such "
                            f"as pixel values), got {first.dtype}")
        self.event_shape = tuple(first.shape[1:])
        if self.tensor is not None:
            self._check_finite(self.tensor, torch.arange(self.size))

    def _item(self, i: int) -> torch.Tensor:
        item = self.dataset[i]
        return torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item)

    def _check_finite(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        if not x.is_floating_point():
            return
        bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1)
        if bad.any():
            where = idx[bad.cpu()][:5].tolist()
            raise ValueError(f"{self.name} has {int(bad.sum())} example(s) with NaN or infinite "
                             f"values (at indices {where}...); remove or impute them")

    def batch(self, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The examples at ``idx``, on the device and in the dtype of ``like``."""
        if self.tensor is not None:
            x = self.tensor[idx.to(self.tensor.device)]
        else:
            x = torch.stack([self._item(i) for i in idx.tolist()])
            self._check_finite(x, idx)
        return x.to(device=like.device, dtype=like.dtype)


class _LogProb(nn.Module):
    """DDP synchronizes gradients for what its ``forward`` computes, so route ``log_prob``
    through ``forward``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.log_prob(x)


def _checked(log_prob: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if log_prob.shape != x.shape[:1]:
        raise ValueError(f"model.log_prob must return one value per example, shape "
                         f"({len(x)},), got {tuple(log_prob.shape)}; is the event shape declared "
                         "(e.g. .to_event)?")
    return log_prob


def _bits_per_dim(nll: float, x: torch.Tensor) -> float:
    """Nats per example to bits per dimension: the definition of ``bits_per_dim``, applied to a
    log-likelihood already computed rather than evaluating the model again."""
    return nll / (x[0].numel() * math.log(2))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast_state(model: nn.Module) -> None:
    """Give every rank rank 0's weights and buffers through ``load_state_dict``, so that Python
    mirrors of buffers (ActNorm's ``_initialized``) and version-keyed caches follow."""
    state = model.state_dict()
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            state[key] = value.clone()
            dist.broadcast(state[key], src=0)
    model.load_state_dict(state)


class _Run:
    """The state of one training run: what the checkpoint holds and what the guard rolls back
    (model, optimizer and schedule, from an in-memory snapshot)."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], lr: float,
                 warmup_steps: int, seed: int) -> None:
        self.model = model
        self.optimizer = adam(params, lr)
        self.scheduler = linear_warmup(self.optimizer, warmup_steps)
        self.order = torch.Generator().manual_seed(seed)  # the data order, and nothing else
        self.history = History()
        self.best: dict[str, torch.Tensor] | None = None
        self.bad_streak = 0
        self.epoch = 0

    def take_snapshot(self) -> None:
        self._snapshot = [copy.deepcopy(part.state_dict())
                          for part in (self.model, self.optimizer, self.scheduler)]

    def roll_back(self) -> None:
        # Copied again: Adam adopts loaded tensors as its state and would update the snapshot.
        for state, part in zip(self._snapshot, (self.model, self.optimizer, self.scheduler)):
            part.load_state_dict(copy.deepcopy(state))

    def state_dict(self, run: dict, rngs: list[dict]) -> dict[str, Any]:
        return {"format": _FORMAT, "run": run, "epoch": self.epoch,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "order": self.order.get_state(),
                "rng": rngs, "history": self.history.to_dict(), "best": self.best,
                "bad_streak": self.bad_streak}

    def load_state_dict(self, ckpt: dict[str, Any], rank: int, world: int,
                        device: torch.device) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.order.set_state(ckpt["order"])
        set_rng_state(ckpt["rng"], rank, world, device)
        self.history = History.from_dict(ckpt["history"])
        self.best, self.bad_streak, self.epoch = ckpt["best"], ckpt["bad_streak"], ckpt["epoch"]


@torch.no_grad()
def _evaluate(model: nn.Module, val: _Data, batch_size: int, rank: int, world: int,
              like: torch.Tensor) -> tuple[float, float | None]:
    """Mean NLL and bits/dim over ``val``, each rank taking a slice, sums all-reduced."""
    has_bpd = callable(getattr(model, "bits_per_dim", None))
    was_training = model.training
    model.eval()
    nll = bpd = 0.0
    for idx in torch.arange(val.size).tensor_split(world)[rank].split(batch_size):
        if len(idx):
            x = val.batch(idx, like)
            batch_nll = -_checked(model.log_prob(x), x).sum().item()
            nll += batch_nll
            if has_bpd:
                bpd += _bits_per_dim(batch_nll, x)
    model.train(was_training)
    if world > 1:
        sums = torch.tensor([nll, bpd], dtype=like.dtype, device=like.device)
        dist.all_reduce(sums)
        nll, bpd = sums.tolist()
    return nll / val.size, (bpd / val.size if has_bpd else None)


def fit(
    model: nn.Module,
    data: torch.Tensor | Dataset,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup_steps: int = 100,
    clip_grad_norm: float | None = 100.0,
    val_data: torch.Tensor | Dataset | None = None,
    patience: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    max_bad_steps: int = 10,
    snapshot_every: int = 100,
    progress: bool = True,
    callback: Callable[[int, History], bool | None] | None = None,
) -> History:
    """Fit ``model`` to ``data`` by maximum likelihood with Adam; return the :class:`History`.

    :param model: any ``nn.Module`` with ``log_prob(x) -> Tensor[batch]``; if it also has
        ``bits_per_dim(x)``, validation and the progress bar report it. Trained in place.
    :param data: a Tensor ``(N, ...)`` or a map-style Dataset (items: tensors, or tuples whose
        first entry is the example), of real or integer values. Batches move to the model's
        device and dtype.
    :param epochs: total number of epochs, counting those a resumed checkpoint already did.
    :param batch_size: the global batch size (split across ranks under ``torch.distributed``).
    :param lr: Adam's learning rate after warm-up.
    :param warmup_steps: optimizer steps of linear warm-up (:func:`linear_warmup`).
    :param clip_grad_norm: maximum gradient norm (``None``: no clipping).
    :param val_data: examples to validate on after each epoch, as ``data``.
    :param patience: stop after this many epochs without a lower validation loss, and in any
        case end with the weights of the best epoch (needs ``val_data``).
    :param checkpoint_dir: directory for ``checkpoint.pt``, written at the end of each epoch.
    :param resume: continue from the checkpoint in ``checkpoint_dir``, exactly as if never
        interrupted; the model, data and settings (except ``epochs``, ``patience``,
        ``max_bad_steps``, ``progress``, ``callback``) must be those of the original run.
    :param overwrite: start afresh even though ``checkpoint_dir`` holds a checkpoint.
    :param seed: seeds the generator of the data order, and nothing else.
    :param max_bad_steps: consecutive non-finite steps after which training stops.
    :param snapshot_every: optimizer steps between in-memory snapshots to roll back to (one is
        also taken at the end of each epoch).
    :param progress: show a tqdm bar with the loss and bits/dim (rank 0 only).
    :param callback: ``callback(epoch, history)`` after each epoch (counted from 0) and its
        checkpoint; return ``True`` to stop.
    :raises RuntimeError: after ``max_bad_steps`` consecutive non-finite steps, or when the
        checkpoint to resume from cannot be read.
    :raises FileExistsError: ``checkpoint_dir`` holds a checkpoint and neither ``resume`` nor
        ``overwrite`` is set.

    Under ``torch.distributed`` (e.g. ``torchrun``) every rank calls ``fit`` with the same
    data and ``checkpoint_dir`` (a shared one); rank 0's initial weights are broadcast, only
    rank 0 writes the checkpoint, and a last batch with fewer examples than ranks is dropped.

    >>> import torch, pyro.distributions as dist, pyro_flows
    >>> class Density(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.flow = pyro_flows.build("realnvp", event_shape=(2,))
    ...     def log_prob(self, x):
    ...         base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    ...         return dist.TransformedDistribution(base, [self.flow]).log_prob(x)
    >>> history = fit(Density(), torch.randn(256, 2) * 3, epochs=2, warmup_steps=2,
    ...               progress=False)
    >>> len(history.train_loss)
    2
    """
    for name, value in [("epochs", epochs), ("batch_size", batch_size),
                        ("max_bad_steps", max_bad_steps), ("snapshot_every", snapshot_every)]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not lr > 0 or (clip_grad_norm is not None and not clip_grad_norm > 0):
        raise ValueError(f"lr and clip_grad_norm must be positive, got {lr}, {clip_grad_norm}")
    if patience is not None and (val_data is None or patience < 1):
        raise ValueError("patience needs val_data and must be >= 1")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")
    rank, world = _world()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    like = params[0]
    train = _Data(data, "data")
    val = None if val_data is None else _Data(val_data, "val_data")
    if val is not None and val.event_shape != train.event_shape:
        raise ValueError(f"val_data examples have shape {val.event_shape}, data examples "
                         f"{train.event_shape}")
    if batch_size < world or train.size < world:
        raise ValueError(f"batch_size ({batch_size}) and the number of examples ({train.size}) "
                         f"must be at least the number of processes ({world})")
    run = {"model": {k: list(v.shape) for k, v in model.state_dict().items()
                     if isinstance(v, torch.Tensor)},
           "data": [train.size, *train.event_shape],
           "val_data": [] if val is None else [val.size, *val.event_shape],
           "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps,
           "clip_grad_norm": clip_grad_norm, "seed": seed, "snapshot_every": snapshot_every}
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME

    state = _Run(model, params, lr, warmup_steps, seed)
    model.train()
    if resume:
        state.load_state_dict(load_checkpoint(path, run, _FORMAT), rank, world, like.device)
    else:
        if path is not None and path.exists() and not overwrite:
            raise FileExistsError(f"{path} already holds a checkpoint; pass resume=True to "
                                  "continue that run or overwrite=True to replace it")
        if world > 1:
            _broadcast_state(model)
        # Data-dependent initializations (ActNorm) on the first global batch, every rank taking
        # part, before DDP starts syncing gradients.
        peek = torch.Generator().set_state(state.order.get_state())
        first = torch.randperm(train.size, generator=peek)[:batch_size].tensor_split(world)[rank]
        x = train.batch(first, like)
        initialize(model, x)
        with torch.no_grad():
            _checked(model.log_prob(x), x)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    state.take_snapshot()
    log_prob = model.log_prob if world == 1 else DistributedDataParallel(
        _LogProb(model), device_ids=[like.device] if like.device.type == "cuda" else None,
        static_graph=True)  # static: finds the unused parameters once, then costs nothing
    has_bpd = callable(getattr(model, "bits_per_dim", None))
    per_epoch = train.size // batch_size + (train.size % batch_size >= world)
    shown: dict[str, str] = {}

    with tqdm(total=epochs * per_epoch, initial=min(state.epoch, epochs) * per_epoch,
              unit="step", disable=not progress or rank != 0, dynamic_ncols=True) as bar:
        while state.epoch < epochs and not state.history.stopped_early:
            began = time.perf_counter()
            bar.set_description(f"epoch {state.epoch + 1}/{epochs}")
            total, count, skipped = 0.0, 0, 0
            batches = torch.randperm(train.size, generator=state.order).split(batch_size)
            for idx in (b for b in batches if len(b) >= world):
                x = train.batch(idx.tensor_split(world)[rank], like)
                nll = -_checked(log_prob(x), x).sum()
                state.optimizer.zero_grad(set_to_none=True)
                # DDP averages gradients over ranks; so scaled, they are the global mean's.
                (nll * (world / len(idx))).backward()
                nll = nll.detach().clone()
                if world > 1:
                    dist.all_reduce(nll)
                norm = nn.utils.clip_grad_norm_(params, clip_grad_norm or math.inf)
                # Loss and gradients are all-reduced: every rank takes the same branch.
                if math.isfinite(nll.item()) and math.isfinite(norm.item()):
                    state.optimizer.step()
                    state.scheduler.step()
                    state.bad_streak = 0
                    total, count = total + nll.item(), count + len(idx)
                    if state.scheduler.last_epoch % snapshot_every == 0:
                        state.take_snapshot()
                else:
                    skipped, state.bad_streak = skipped + 1, state.bad_streak + 1
                    state.roll_back()
                    if state.bad_streak >= max_bad_steps:
                        raise RuntimeError(
                            f"training stopped: {state.bad_streak} consecutive steps had a "
                            f"non-finite loss or gradient (in epoch {state.epoch}); each was "
                            "skipped and the model rolled back to its last good state. Try a "
                            f"lower lr (now {lr:g}), a longer warm-up (warmup_steps="
                            f"{warmup_steps}), a smaller clip_grad_norm, or check the data and "
                            "the model's log_prob")
                if not bar.disable:
                    if count:
                        shown["loss"] = f"{total / count:.4g}"
                    if has_bpd and count:
                        shown["bpd"] = f"{_bits_per_dim(total / count, x):.4g}"
                    bar.set_postfix(shown, refresh=False)
                bar.update()

            history = state.history
            history.train_loss.append(total / count if count else math.nan)
            if val is not None:
                val_loss, val_bpd = _evaluate(model, val, batch_size, rank, world, like)
                history.val_loss.append(val_loss)
                shown["val"] = f"{val_loss:.4g}"
                if val_bpd is not None:
                    history.val_bits_per_dim.append(val_bpd)
            history.lr.append(state.optimizer.param_groups[0]["lr"])
            history.steps.append(state.scheduler.last_epoch)
            history.skipped_steps.append(skipped)
            history.seconds.append(time.perf_counter() - began)
            if patience is not None:
                best_epoch = history.best_epoch
                if best_epoch == state.epoch:
                    state.best = copy.deepcopy(model.state_dict())
                since = state.epoch - (-1 if best_epoch is None else best_epoch)
                history.stopped_early = since >= patience
            state.epoch += 1
            state.take_snapshot()
            if path is not None:
                rngs = [rng_state(like.device)]
                if world > 1:
                    rngs = [None] * world
                    dist.all_gather_object(rngs, rng_state(like.device))
                if rank == 0:
                    save_torch(state.state_dict(run, rngs), path)
            stop = bool(callback is not None and callback(state.epoch - 1, history))
            if world > 1:
                flag = torch.tensor(float(stop), device=like.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if stop:
                break
    if state.best is not None:
        model.load_state_dict(state.best)
    return state.history
