"""The non-finite guard: a step whose loss or gradient is NaN or infinite is skipped.

It checks before the optimizer steps, so a bad step has touched nothing but the gradients
(which the next step replaces): there is nothing to roll back, no snapshot to keep, and every
good step survives. The check costs one wait for the device per step.
"""

from __future__ import annotations

import torch

__all__ = ["NonFiniteGuard", "NonFiniteTraining"]


class NonFiniteTraining(RuntimeError):
    """Training cannot go on: too many consecutive non-finite steps, or none took effect.

    :ivar consecutive: non-finite steps in a row when training stopped.
    :ivar skipped: non-finite steps skipped in all.
    """

    def __init__(self, message: str, consecutive: int, skipped: int) -> None:
        super().__init__(message)
        self.consecutive, self.skipped = consecutive, skipped


class NonFiniteGuard:
    """Say whether a step may be taken; count the ones skipped.

    :param max_bad_steps: consecutive non-finite steps after which :meth:`allows` raises
        :class:`NonFiniteTraining`.
    :param advice: appended to that error: what the user can change.

    >>> guard = NonFiniteGuard(max_bad_steps=3)
    >>> guard.allows(torch.tensor(1.0), torch.tensor(float("nan")))
    False
    >>> guard.allows(torch.tensor(2.0), torch.tensor(0.5)), guard.skipped
    (True, 1)
    """

    def __init__(self, max_bad_steps: int = 10, advice: str = "") -> None:
        if not isinstance(max_bad_steps, int) or max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be an integer >= 1, got {max_bad_steps!r}")
        self.max_bad_steps, self.advice = max_bad_steps, advice
        self.skipped = 0  # in all
        self.consecutive = 0

    def allows(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Whether ``loss`` and ``grad_norm`` are finite (one host sync for both)."""
        if bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_bad_steps:
            raise NonFiniteTraining(
                f"training stopped: {self.consecutive} consecutive steps had a non-finite loss "
                f"or gradient; each was skipped. {self.advice}".strip(),
                self.consecutive, self.skipped)
        return False

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped, self.consecutive = state["skipped"], state["consecutive"]
