"""``checkpoint.pt``: everything a run needs to continue exactly as if never interrupted,
written atomically, read back as data (``weights_only=True``) and checked to belong to the run
that reads it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..checkpoint import load_checkpoint, remove_stale_temp_files, rng_state, save_torch

__all__ = ["CHECKPOINT_NAME", "Checkpointer", "gather_rng_states"]

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = 2  # bump when the checkpoint layout changes


class Checkpointer:
    """The checkpoint of one run in ``directory``.

    :param directory: where ``checkpoint.pt`` lives (created on the first save).
    :param run: what identifies the run (model shapes, data shape, settings): a checkpoint
        whose ``run`` differs is refused by :meth:`load`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     saver = Checkpointer(d, {"lr": 0.1})
    ...     _ = saver.save({"epoch": 3})
    ...     saver.load()["epoch"]
    3
    """

    def __init__(self, directory: str | os.PathLike, run: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / CHECKPOINT_NAME
        self.run = run

    def exists(self) -> bool:
        return self.path.exists()

    def remove_stale_temp_files(self) -> list[Path]:
        """Clear what a process killed mid-save left behind (call on one rank only)."""
        return remove_stale_temp_files(self.directory)

    def save(self, state: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        return save_torch({"format": _FORMAT, "run": self.run, **state}, self.path)

    def load(self) -> dict[str, Any]:
        """The checkpoint, or an error naming why it cannot be resumed from."""
        return load_checkpoint(self.path, self.run, _FORMAT)


def gather_rng_states(device: torch.device, world: int) -> list[dict[str, Any]]:
    """Every rank's random states, one entry per rank (a collective: every rank calls it)."""
    if world == 1:
        return [rng_state(device)]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, rng_state(device))
    return states
