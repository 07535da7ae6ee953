"""Training in small parts that a custom loop can reuse (see the docs' "A custom training
loop"): :func:`train_step` (loss and gradients), :class:`NonFiniteGuard` (skip a non-finite
step), :class:`Checkpointer` (atomic, checked checkpoints), :func:`mean_nll` (validation);
:func:`fit` composes them."""

from .checkpointer import CHECKPOINT_NAME, Checkpointer, gather_rng_states
from .evaluation import mean_nll
from .examples import Examples, world
from .fit import TrainingInterrupted, fit
from .guard import NonFiniteGuard, NonFiniteTraining
from .history import History
from .optim import adam, linear_warmup
from .step import LossFn, Objective, StepResult, nll, train_step

__all__ = [
    "CHECKPOINT_NAME", "Checkpointer", "Examples", "History", "LossFn", "NonFiniteGuard",
    "NonFiniteTraining", "Objective", "StepResult", "TrainingInterrupted", "adam", "fit",
    "gather_rng_states", "linear_warmup", "mean_nll", "nll",
    "train_step", "world",
]
