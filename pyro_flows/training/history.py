"""What a training run measured, epoch by epoch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["History"]


@dataclass
class History:
    """What :func:`~pyro_flows.fit` measured, one entry per epoch (``to_dict()`` is JSON-ready
    once non-finite values are replaced, as :func:`~pyro_flows.checkpoint.save_json` does).

    :ivar train_loss: mean loss (by default the negative log-likelihood, nats per example)
        over the epoch's effective steps; NaN when every step of the epoch was skipped.
    :ivar val_loss: mean NLL on ``val_data`` after the epoch (empty without ``val_data``).
    :ivar val_bits_per_dim: ``val_loss`` in bits per dimension, ``/ (D ln 2)`` (empty unless
        the model has a ``bits_per_dim`` method, as :class:`~pyro_flows.FlowModel` does, and
        ``val_data`` is given).
    :ivar lr: learning rate at the end of the epoch.
    :ivar steps: optimizer steps taken by the end of the epoch (skipped ones excluded).
    :ivar skipped_steps: steps skipped by the non-finite guard during the epoch.
    :ivar seconds: wall-clock duration of the epoch.
    :ivar stopped_early: whether ``patience`` ended the training.

    >>> History(val_loss=[3.0, 2.0, 2.5]).best_epoch
    1
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
        """The inverse of :meth:`to_dict`, also for JSON in which NaN was written as ``null``."""
        d = {k: [math.nan if v is None else v for v in x] if isinstance(x, list) else x
             for k, x in d.items()}
        return cls(**d)
