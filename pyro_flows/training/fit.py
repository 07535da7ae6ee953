"""Maximum-likelihood training of a flow: :func:`fit` composes the parts of this package (the
train step, the non-finite guard, the checkpointer, evaluation) with warm-up, clipping, early
stopping, exact resumption and DistributedDataParallel under ``torchrun``."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from ..checkpoint import set_rng_state
from ..ema import EMA
from ..precision import grad_scaler
from .checkpointer import Checkpointer, gather_rng_states
from .evaluation import mean_nll
from .examples import Examples, broadcast_state, world
from .guard import NonFiniteGuard, NonFiniteTraining
from .history import History
from .optim import adam, linear_warmup
from ..init import initialize
from .step import LossFn, Objective, train_step

__all__ = ["TrainingInterrupted", "fit"]


class TrainingInterrupted(Exception):
    """``interrupt()`` asked :func:`fit` to stop; the checkpoint (if any) holds the run up to
    the last finished step, and ``fit(..., resume=True)`` continues it exactly."""

    def __init__(self, epoch: int, position: int, saved: bool) -> None:
        where = f"epoch {epoch + 1}, after step {position} of the epoch"
        super().__init__(f"training interrupted in {where}" + ("; checkpoint written" if saved
                                                                 else ""))
        self.epoch, self.position, self.saved = epoch, position, saved


class _Run:
    """What a checkpoint holds: the model, optimizer, schedule, guard, data order and History,
    and where in the current epoch training stands (a checkpoint taken on an interrupt is
    mid-epoch: ``order`` is then the generator state the epoch began with)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, warmup_steps: int,
                 seed: int, guard: NonFiniteGuard, scaler: torch.amp.GradScaler) -> None:
        self.model, self.optimizer, self.guard, self.scaler = model, optimizer, guard, scaler
        self.ema: EMA | None = None  # made once the model is initialized
        self.scheduler = linear_warmup(optimizer, warmup_steps)
        self.order = torch.Generator().manual_seed(seed)  # the data order, and nothing else
        self.history = History()
        self.best: dict[str, torch.Tensor] | None = None
        self.epoch = self.position = 0
        self.epoch_loss, self.epoch_count, self.skipped_before_epoch = 0.0, 0, 0

    def state_dict(self, order: torch.Tensor, rngs: list[dict]) -> dict[str, Any]:
        loss = self.epoch_loss
        return {"epoch": self.epoch, "position": self.position, "order": order,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "guard": self.guard.state_dict(),
                "rng": rngs, "history": self.history.to_dict(), "best": self.best,
                "epoch_loss": loss if torch.is_tensor(loss) else torch.tensor(loss),
                "epoch_count": self.epoch_count,
                "skipped_before_epoch": self.skipped_before_epoch,
                "ema": None if self.ema is None else self.ema.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, ckpt: dict[str, Any], rank: int, size: int,
                        like: torch.Tensor) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.guard.load_state_dict(ckpt["guard"])
        self.order.set_state(ckpt["order"])
        set_rng_state(ckpt["rng"], rank, size, like.device)
        self.history = History.from_dict(ckpt["history"])
        self.best, self.epoch, self.position = ckpt["best"], ckpt["epoch"], ckpt["position"]
        self.epoch_loss = ckpt["epoch_loss"].to(device=like.device, dtype=like.dtype)
        self.epoch_count = ckpt["epoch_count"]
        self.skipped_before_epoch = ckpt["skipped_before_epoch"]
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        if ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])

    def averaged(self):
        """A block in which the model holds its averaged weights (if any are kept)."""
        return self.ema.average_weights(self.model) if self.ema else contextlib.nullcontext()


def _check_settings(epochs: int, batch_size: int, lr: float, clip_grad_norm: float | None,
                    val_data: Any, patience: int | None, checkpoint_dir: Any, resume: bool,
                    log_every: int) -> None:
    for name, value in [("epochs", epochs), ("batch_size", batch_size),
                        ("log_every", log_every)]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not lr > 0 or (clip_grad_norm is not None and not clip_grad_norm > 0):
        raise ValueError(f"lr and clip_grad_norm must be positive, got {lr}, {clip_grad_norm}")
    if patience is not None and (val_data is None or patience < 1):
        raise ValueError("patience needs val_data and must be >= 1")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")


def fit(
    model: nn.Module,
    data: torch.Tensor | Dataset,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 2e-3,
    warmup_steps: int = 100,
    clip_grad_norm: float | None = 100.0,
    val_data: torch.Tensor | Dataset | None = None,
    patience: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    max_bad_steps: int = 10,
    optimizer: torch.optim.Optimizer | None = None,
    loss: LossFn | None = None,
    ema_decay: float | None = 0.999,
    precision: str = "fp32",
    progress: bool = True,
    log_every: int = 20,
    callback: Callable[[int, History], bool | None] | None = None,
    interrupt: Callable[[], bool] | None = None,
) -> History:
    """Fit ``model`` to ``data``, by default by maximum likelihood with Adam; return the
    :class:`History`.

    :param model: any ``nn.Module`` with ``log_prob(x) -> Tensor[batch]``; if it also has
        ``bits_per_dim(x)``, validation reports it. Trained in place.
    :param data: a Tensor ``(N, ...)`` or a map-style Dataset (items: tensors, or tuples whose
        first entry is the example), of real or integer values. Batches move to the model's
        device and dtype.
    :param epochs: total number of epochs, counting those a resumed checkpoint already did.
    :param batch_size: the global batch size (split across ranks under ``torch.distributed``).
    :param lr: Adam's learning rate after warm-up (unused when ``optimizer`` is given).
    :param warmup_steps: optimizer steps of linear warm-up (:func:`linear_warmup`).
    :param clip_grad_norm: maximum gradient norm (``None``: no clipping).
    :param val_data: examples to validate on after each epoch, as ``data``.
    :param patience: stop after this many epochs without a lower validation loss, and in any
        case end with the weights of the best epoch (needs ``val_data``).
    :param checkpoint_dir: directory for ``checkpoint.pt``, written at the end of each epoch.
    :param resume: continue from the checkpoint in ``checkpoint_dir``, exactly as if never
        interrupted; the model, data and settings (except ``epochs``, ``patience``,
        ``max_bad_steps``, ``progress``, ``log_every``, ``callback``, ``interrupt``) must be
        those of the original run.
    :param overwrite: start afresh even though ``checkpoint_dir`` holds a checkpoint.
    :param seed: seeds the generator of the data order, and nothing else.
    :param max_bad_steps: consecutive non-finite steps after which training stops.
    :param optimizer: the optimizer of the model's trainable parameters (default: fused
        :func:`adam` at ``lr``); warm-up scales its learning rates.
    :param loss: ``loss(model, x) -> Tensor[batch]``, minimized on average (default: the
        negative log-likelihood, ``-model.log_prob(x)``).
    :param ema_decay: keep an exponential moving average of the weights with this decay
        (:class:`~pyro_flows.ema.EMA`, Polyak averaging); validation, early stopping and the
        returned model then use the averaged weights, while training continues from the raw
        ones (both are in the checkpoint). ``None``: no averaging. With lr 2e-3 it lowered the
        held-out NLL on digits, Fashion-MNIST and three 2-D toys (``benchmarks/RESULTS.md``).
    :param precision: ``"fp32"``, ``"bf16-mixed"`` or ``"fp16-mixed"``: conditioner networks
        in low precision, every log-det and invertible update in float32, so the density
        stays exact (:mod:`pyro_flows.precision`); ``"fp16-mixed"`` adds a gradient scaler.
    :param progress: show a tqdm bar with the loss (rank 0 only).
    :param log_every: steps between updates of the bar (each reads the loss from the device).
    :param callback: ``callback(epoch, history)`` after each epoch (counted from 0) and its
        checkpoint; return ``True`` to stop.
    :param interrupt: called after each step (every ``log_every`` steps under
        ``torch.distributed``); when it returns ``True``, ``fit`` writes a checkpoint at that
        step and raises :class:`TrainingInterrupted`.
    :raises ~pyro_flows.training.NonFiniteTraining: after ``max_bad_steps`` consecutive non-finite steps, or when
        no step at all took effect.
    :raises FileExistsError: ``checkpoint_dir`` holds a checkpoint and neither ``resume`` nor
        ``overwrite`` is set.

    Under ``torch.distributed`` (e.g. ``torchrun``) every rank calls ``fit`` with the same
    data and ``checkpoint_dir`` (a shared one); rank 0's initial weights are broadcast, only
    rank 0 writes the checkpoint, and a last batch with fewer examples than ranks is dropped.

    >>> import torch, pyro_flows
    >>> model = pyro_flows.FlowModel.build("realnvp", (2,), num_layers=2)
    >>> history = fit(model, torch.randn(256, 2) * 3, epochs=2, warmup_steps=2,
    ...               progress=False)
    >>> len(history.train_loss), history.skipped_steps
    (2, [0, 0])
    """
    _check_settings(epochs, batch_size, lr, clip_grad_norm, val_data, patience, checkpoint_dir,
                    resume, log_every)
    rank, size = world()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    like = params[0]
    train = Examples(data, "data")
    val = None if val_data is None else Examples(val_data, "val_data")
    if val is not None and val.event_shape != train.event_shape:
        raise ValueError(f"val_data examples have shape {val.event_shape}, data examples "
                         f"{train.event_shape}")
    if batch_size < size or train.size < size:
        raise ValueError(f"batch_size ({batch_size}) and the number of examples ({train.size}) "
                         f"must be at least the number of processes ({size})")
    optimizer = adam(params, lr) if optimizer is None else optimizer
    advice = (f"Try a lower lr (now {lr:g}), a longer warm-up (warmup_steps={warmup_steps}), "
              "a smaller clip_grad_norm, or check the data and the model's log_prob")
    scaler = grad_scaler(precision, like.device)
    run = _Run(model, optimizer, warmup_steps, seed, NonFiniteGuard(max_bad_steps, advice),
               scaler)
    checkpointer = None if checkpoint_dir is None else Checkpointer(checkpoint_dir, {
        "model": {k: list(v.shape) for k, v in model.state_dict().items()
                  if isinstance(v, torch.Tensor)},
        "data": [train.size, *train.event_shape],
        "val_data": [] if val is None else [val.size, *val.event_shape],
        "batch_size": batch_size, "optimizer": type(optimizer).__name__,
        "lr": [g["initial_lr"] for g in optimizer.param_groups],
        "loss": "nll" if loss is None else getattr(loss, "__qualname__", type(loss).__name__),
        "warmup_steps": warmup_steps, "clip_grad_norm": clip_grad_norm, "seed": seed,
        "ema_decay": ema_decay, "precision": precision})

    model.train()
    if resume:
        run.ema = None if ema_decay is None else EMA(model, ema_decay)
        run.load_state_dict(checkpointer.load(), rank, size, like)
    else:
        if checkpointer is not None and checkpointer.exists() and not overwrite:
            raise FileExistsError(f"{checkpointer.path} already holds a checkpoint; pass "
                                  "resume=True to continue that run or overwrite=True to "
                                  "replace it")
        if size > 1:
            broadcast_state(model)
        peek = torch.Generator().set_state(run.order.get_state())
        first = torch.randperm(train.size, generator=peek)[:batch_size].tensor_split(size)[rank]
        initialize(model, train.batch(first, like))
        run.ema = None if ema_decay is None else EMA(model, ema_decay)
    if checkpointer is not None and rank == 0:
        checkpointer.remove_stale_temp_files()
    objective: nn.Module = Objective(model, loss, precision)
    if size > 1:  # static: finds the unused parameters once, then costs nothing
        objective = DistributedDataParallel(
            objective, device_ids=[like.device] if like.device.type == "cuda" else None,
            static_graph=True)

    def save(order: torch.Tensor) -> None:
        if checkpointer is not None:
            rngs = gather_rng_states(like.device, size)
            if rank == 0:
                checkpointer.save(run.state_dict(order, rngs))

    def interrupted(step: int) -> bool:
        if interrupt is None:
            return False
        if size == 1:
            return bool(interrupt())
        if step % log_every:
            return False
        flag = torch.tensor(float(bool(interrupt())), device=like.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    per_epoch = train.size // batch_size + (train.size % batch_size >= size)
    with tqdm(total=epochs * per_epoch, initial=min(run.epoch, epochs) * per_epoch + run.position,
              unit="step", disable=not progress or rank != 0, dynamic_ncols=True) as bar:
        while run.epoch < epochs and not run.history.stopped_early:
            began = time.perf_counter()
            bar.set_description(f"epoch {run.epoch + 1}/{epochs}")
            start_order = run.order.get_state()
            batches = [b for b in torch.randperm(train.size, generator=run.order).split(batch_size)
                       if len(b) >= size]
            if run.position == 0:
                run.epoch_loss, run.epoch_count = 0.0, 0
                run.skipped_before_epoch = run.guard.skipped
            for idx in batches[run.position:]:
                x = train.batch(idx.tensor_split(size)[rank], like)
                # DDP averages gradients over ranks; so scaled, they are the global mean's.
                result = train_step(objective, x, optimizer, params, clip_grad_norm,
                                    scale=size / len(idx), scaler=scaler)
                batch_loss = result.loss.clone()
                if size > 1:  # gradients are all-reduced too: every rank takes the same branch
                    dist.all_reduce(batch_loss)
                if run.guard.allows(batch_loss, result.grad_norm):
                    scaler.step(optimizer)  # optimizer.step(), unless fp16's scaler is on
                    run.scheduler.step()
                    if run.ema is not None:
                        run.ema.update(model)
                    run.epoch_loss = run.epoch_loss + batch_loss
                    run.epoch_count += len(idx)
                scaler.update()  # fp16: learns from the skipped steps too; else a no-op
                run.position += 1
                if not bar.disable and run.epoch_count and (
                        run.position % log_every == 0 or run.position == len(batches)):
                    bar.set_postfix(_shown(run, loss, x), refresh=False)
                bar.update()
                if interrupted(run.position):
                    save(start_order)
                    raise TrainingInterrupted(run.epoch, run.position, checkpointer is not None)
            _end_epoch(run, val, batch_size, patience, began, precision)
            save(run.order.get_state())
            if _stop(callback, run, like, size):
                break
    if run.scheduler.last_epoch == 0 and run.history.steps:
        raise NonFiniteTraining(
            f"no step took effect: all {run.guard.skipped} steps had a non-finite loss or "
            f"gradient. {advice}", run.guard.consecutive, run.guard.skipped)
    if run.best is not None:
        model.load_state_dict(run.best)
    elif run.ema is not None:
        run.ema.copy_to(model)
    return run.history


def _shown(run: _Run, loss: LossFn | None, x: torch.Tensor) -> dict[str, str]:
    """The epoch's mean loss so far, and in bits/dim when it is a flow's NLL."""
    mean = float(run.epoch_loss) / run.epoch_count
    shown = {"loss": f"{mean:.4g}"}
    if loss is None and callable(getattr(run.model, "bits_per_dim", None)):
        shown["bpd"] = f"{mean / (x[0].numel() * math.log(2)):.4g}"
    return shown


def _end_epoch(run: _Run, val: Examples | None, batch_size: int, patience: int | None,
               began: float, precision: str) -> None:
    history = run.history
    count = run.epoch_count
    history.train_loss.append(float(run.epoch_loss) / count if count else math.nan)
    if val is not None:
        with run.averaged():
            val_loss, val_bpd = mean_nll(run.model, val, batch_size, precision)
        history.val_loss.append(val_loss)
        if val_bpd is not None:
            history.val_bits_per_dim.append(val_bpd)
    history.lr.append(run.optimizer.param_groups[0]["lr"])
    history.steps.append(run.scheduler.last_epoch)
    history.skipped_steps.append(run.guard.skipped - run.skipped_before_epoch)
    history.seconds.append(time.perf_counter() - began)
    if patience is not None:
        best_epoch = history.best_epoch
        if best_epoch == run.epoch:
            with run.averaged():
                run.best = copy.deepcopy(run.model.state_dict())
        since = run.epoch - (-1 if best_epoch is None else best_epoch)
        history.stopped_early = since >= patience
    run.epoch += 1
    run.position = 0


def _stop(callback: Callable[[int, History], bool | None] | None, run: _Run,
          like: torch.Tensor, size: int) -> bool:
    stop = bool(callback is not None and callback(run.epoch - 1, run.history))
    if size > 1:
        flag = torch.tensor(float(stop), device=like.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
    return stop
