"""Files a run writes and reads back: atomic writes (a temporary file in the same directory,
then a rename, so a crash leaves the old file or the new one, never half of one; a crash
mid-write leaves a ``.NAME.*.tmp`` file that :func:`remove_stale_temp_files` clears), checkpoints
loaded with ``weights_only=True`` (a checkpoint is data, never code), and the random-number
states that make a resumed run continue exactly as an uninterrupted one."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import secrets
import warnings
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch

__all__ = ["atomic_write", "load_checkpoint", "remove_stale_temp_files", "rng_state",
           "save_json", "save_torch", "set_rng_state", "strict_json"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``.

    The file gets the permissions of any new file (``0o666`` less the umask), not the
    ``0o600`` of :func:`tempfile.mkstemp`.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None``: JSON has no NaN or Infinity.

    >>> strict_json({"loss": [1.5, float("nan")], "best": float("inf")})
    {'loss': [1.5, None], 'best': None}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Strict JSON (non-finite floats become ``null``, :func:`strict_json`), indented, written
    atomically."""
    text = json.dumps(strict_json(obj), indent=2, allow_nan=False)
    return atomic_write(path, lambda f: f.write(text.encode()))


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files that :func:`atomic_write` leaves when the process dies
    mid-write; return them. Call it before anything in ``directory`` is written again."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(".*.tmp") if p.is_file()]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


def rng_state(device: torch.device) -> dict[str, Any]:
    """Torch's, NumPy's and Python's random states (and CUDA's on a GPU) as tensors and numbers."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(states: list[dict], rank: int, world: int, device: torch.device) -> None:
    """Restore this rank's entry of ``states`` (one per rank that wrote the checkpoint)."""
    if len(states) != world:
        warnings.warn(f"the checkpoint was written by {len(states)} process(es) and is resumed by "
                      f"{world}: every rank takes rank 0's random state, so the run will not "
                      "match an uninterrupted one exactly")
    s = states[rank] if len(states) == world else states[0]
    torch.set_rng_state(s["torch"])
    if "cuda" in s and device.type == "cuda":
        torch.cuda.set_rng_state(s["cuda"], device)
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["words"].tolist()), p["gauss_next"]))


def load_checkpoint(path: Path, run: dict, fmt: int) -> dict:
    """The checkpoint at ``path``, checked to be of format ``fmt`` and of the run ``run``."""
    if not path.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot read checkpoint {path} (corrupt or truncated?): "
                           f"{type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise RuntimeError(f"{path} is not a checkpoint written by pyro_flows.fit "
                           f"(format {fmt})")
    differ = [k for k in run if ckpt["run"].get(k) != run[k]]
    if differ:
        raise ValueError(f"checkpoint {path} belongs to a different run ({', '.join(differ)} "
                         "differ); resume with the same model, data and settings, or start "
                         "afresh with resume=False, overwrite=True or another checkpoint_dir")
    return ckpt
