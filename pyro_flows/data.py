"""Data sets for training and evaluating flows.

Everything here ends in a :class:`Splits`: float32 tensors for the train,
validation and test splits, plus the number of discrete levels for discrete
data.  Discrete data keep their integer values (``0 .. levels - 1``) as
floats; dequantization and rescaling belong to the model, so that the
bits/dim it reports are measured against the data as stored.

Sources:

* 2-D toy densities (:mod:`pyro_flows.toys`, also reachable here), generated from a seed;
* scikit-learn's bundled 8x8 digits (:func:`load_digits_images`);
* Fashion-MNIST from IDX files (:func:`read_idx`, :func:`load_fashion_mnist`);
* the user's own ``.npy`` / ``.npz`` / ``.csv`` files (:func:`load_array`).

:func:`load` picks the source by name or path and makes the splits.
"""

from __future__ import annotations

import gzip
import math
import operator
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# The toys are used here (TOYS, toy, _count) and re-exported: pyro_flows.data.two_moons etc.
from .toys import (TOYS, _count, checkerboard, circles, eight_gaussians,  # noqa: F401
                   pinwheel, spirals, toy, two_moons)

# The toy densities (pyro_flows.toys) are reachable here too, as pyro_flows.data.two_moons etc.
__all__ = [
    "Splits", "DIGITS_LEVELS", "load_digits_images", "read_idx", "FASHION_MNIST_ROOT",
    "FASHION_MNIST_ENV", "load_fashion_mnist", "load_array", "load",
]

PathLike = str | os.PathLike

# Splits ---------------------------------------------------------------------

# eq=False: the generated __eq__ would compare tensors elementwise and then
# fail on ``bool(tensor)``; identity comparison is the useful one here.
@dataclass(frozen=True, eq=False)
class Splits:
    """Train/validation/test splits of one data set (named so as not to shadow
    :class:`torch.utils.data.Dataset`: it is not one; train on ``.train``, validate on ``.val``).

    :param name: where the data came from (toy name, ``"digits"``, path, ...).
    :param train: float32 tensor, ``(N, D)`` vectors or ``(N, C, H, W)`` images.
    :param val: validation split, same event shape as ``train`` (may be empty).
    :param test: test split, same event shape as ``train`` (may be empty).
    :param levels: number of discrete values per entry (values are the
        integers ``0 .. levels - 1`` stored as float), or ``None`` for
        continuous data.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    levels: int | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.train.shape[1:])
        for split in ("train", "val", "test"):
            x = getattr(self, split)
            if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
                raise TypeError(f"Splits {self.name!r}: {split} must be a float32 tensor")
            if x.dim() not in (2, 4) or tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"Splits {self.name!r}: {split} has shape {tuple(x.shape)}; expected "
                    f"(N, D) or (N, C, H, W) with event shape {shape} like train"
                )
        if self.levels is not None and self.levels < 2:
            raise ValueError(f"Splits {self.name!r}: levels must be >= 2 or None: {self.levels}")

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(D,)`` or ``(C, H, W)``."""
        return tuple(self.train.shape[1:])

    @property
    def kind(self) -> str:
        """``"vector"`` for ``(N, D)`` data, ``"image"`` for ``(N, C, H, W)``."""
        return "vector" if len(self.event_shape) == 1 else "image"

    def __repr__(self) -> str:
        # The default repr would print tensor contents; sizes are what one wants.
        return (
            f"Splits(name={self.name!r}, kind={self.kind!r}, event_shape={self.event_shape}, "
            f"train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
            f"levels={self.levels})"
        )

# scikit-learn digits --------------------------------------------------------

#: Digits pixels are the integers 0..16, so a uniform model scores
#: log2(17) = 4.09 bits/dim; anything useful must do better.
DIGITS_LEVELS = 17

def load_digits_images() -> torch.Tensor:
    """scikit-learn's bundled 8x8 digits as images.

    :returns: float32 tensor ``(1797, 1, 8, 8)`` with integer values 0..16,
        i.e. :data:`DIGITS_LEVELS` = 17 levels (not 16, and not a power of two).
    """
    try:
        from sklearn.datasets import load_digits  # lazy: sklearn is an optional dependency
    except ImportError as e:
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from e
    images = load_digits().images  # (1797, 8, 8) float64
    return torch.from_numpy(images.astype(np.float32)).unsqueeze(1)

# IDX files (Fashion-MNIST) --------------------------------------------------

# IDX type codes; all multi-byte values are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a native-endian array.

    The header is two zero bytes, a type code, the number of dimensions and
    one big-endian uint32 per dimension; the data follow, exactly filling the file.

    :raises ValueError: naming the file, if it is not IDX or is truncated or corrupt.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    # Sniff the gzip magic instead of trusting the suffix: files get renamed.
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    if raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: bad IDX magic {raw[:4].hex()}: unknown type code or no dims")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dims)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX file {what}: {len(raw)} bytes, {dims} needs {expected}")
    # astype copies to a writable native-endian array, which torch.from_numpy wants.
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))

#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
#: Environment variable naming another directory holding the files.
FASHION_MNIST_ENV = "PYRO_FLOWS_FASHION_MNIST"
_FASHION_STEMS = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}

def load_fashion_mnist(root: PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the Fashion-MNIST images (labels are not needed for density models).

    :param root: directory holding ``train-images-idx3-ubyte`` and
        ``t10k-images-idx3-ubyte``, each optionally ``.gz``.  Defaults to
        ``$PYRO_FLOWS_FASHION_MNIST`` if set, else :data:`FASHION_MNIST_ROOT`.
    :returns: ``(train, test)`` float32 tensors ``(60000, 1, 28, 28)`` and
        ``(10000, 1, 28, 28)`` with integer values 0..255 (256 levels).
    :raises FileNotFoundError: saying how to get the files, if they are missing.
    """
    if root is None:
        root = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_ROOT
    root = Path(root)
    out = []
    for split, stem in _FASHION_STEMS.items():
        found = [p for p in (root / stem, root / f"{stem}.gz") if p.is_file()]
        if not found:
            raise FileNotFoundError(
                f"Fashion-MNIST {split} images not found: no {stem} or {stem}.gz in {root}. "
                f"Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, "
                f"puts them in {FASHION_MNIST_ROOT}), or pass root=... or set "
                f"{FASHION_MNIST_ENV} to a directory holding the IDX files."
            )
        images = read_idx(found[0])
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise ValueError(
                f"{found[0]}: expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}"
            )
        out.append(torch.from_numpy(images).unsqueeze(1).float())
    return out[0], out[1]

# User files -----------------------------------------------------------------

def _read_csv(path: Path) -> np.ndarray:
    with open(path, encoding="utf-8-sig") as f:
        first = f.readline()
    try:
        [float(v) for v in first.split(",")]
        skip = 0
    except ValueError:  # a non-numeric first line is taken as a header
        skip = 1
    try:
        return np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, encoding="utf-8-sig")
    except ValueError as e:
        raise ValueError(f"{path}: not a numeric CSV ({e})") from None

def _read_numpy(path: Path) -> np.ndarray:
    # np.load goes by the file's content, not its suffix: .npy gives an array,
    # .npz an archive in which we look for the data array.
    try:
        z = np.load(path, allow_pickle=False)
        if isinstance(z, np.ndarray):
            return z
        with z:
            keys = list(z.keys())
            key = next((k for k in ("x", "data") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ValueError(
                    f"cannot tell which array is the data; name it 'x' or 'data' "
                    f"(arrays in the file: {', '.join(keys) or 'none'})"
                )
            return z[key]
    except ValueError as e:
        # numpy's messages (e.g. refusing a pickled object array) omit the file.
        raise ValueError(f"{path}: {e}") from None
    except (EOFError, OSError) as e:  # an empty or truncated file
        raise ValueError(f"{path}: empty or truncated NumPy file ({e}); save it again "
                         f"with numpy.save") from None

def load_array(path: PathLike, n_bits: int | None = None) -> torch.Tensor:
    """Load the user's data from ``.npy``, ``.npz`` or ``.csv``.

    ``.npz`` files use the array named ``x``, else ``data``, else the only
    one.  CSV files are comma-separated numbers; a non-numeric first line is
    skipped as a header.  Pickled objects are never loaded.

    :param n_bits: for discrete data: values must be the integers
        ``0 .. 2**n_bits - 1`` (the data then have ``2**n_bits`` levels).
    :returns: float32 tensor ``(N, D)`` or ``(N, C, H, W)``; anything else is refused, since
        an ``(N, A, B)`` array could be grey images or channels of rows.
    :raises ValueError: naming the file, for bad shape, non-finite or out-of-range values.
    """
    path = Path(path)
    readers = {".npy": _read_numpy, ".npz": _read_numpy, ".csv": _read_csv}
    suffix = path.suffix.lower()
    if suffix not in readers:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .npy, .npz or .csv")
    x = readers[suffix](path)
    if x.dtype == bool:
        x = x.astype(np.uint8)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{path}: data must be real numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        raise ValueError(
            f"{path}: data of shape {x.shape} are ambiguous; save grey images as "
            f"(N, 1, H, W) (x[:, None]) or vectors as (N, D) (x.reshape(len(x), -1))"
        )
    if x.ndim not in (2, 4) or x.shape[0] == 0:
        raise ValueError(
            f"{path}: data of shape {x.shape}; expected (N, D) vectors or (N, C, H, W) "
            f"images with N >= 1"
        )
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"{path}: {bad} entries are not finite (NaN or inf); drop or impute "
                         "them first (e.g. numpy.nan_to_num, or remove those rows)")
    if n_bits is not None:
        # Past 16 bits dequantization is pointless and float32 gets close to inexact.
        if not 1 <= operator.index(n_bits) <= 16:
            raise ValueError(f"n_bits must be in 1..16, got {n_bits}")
        top = 2**n_bits - 1
        out = int(np.count_nonzero((x < 0) | (x > top) | (x != np.floor(x))))
        if out:
            raise ValueError(
                f"{path}: {out} of {x.size} entries are not integers in [0, {top}] "
                f"as n_bits={n_bits} requires"
            )
    return torch.from_numpy(np.asarray(x, dtype=np.float32))

# Choosing and splitting -----------------------------------------------------

def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0):
        raise ValueError(f"fractions must be in [0, 1): val={val_fraction}, test={test_fraction}")
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n - n_val - n_test < 1:
        raise ValueError(
            f"{n} examples leave no training data with val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}"
        )
    return n - n_val - n_test, n_val, n_test

def _split(x: torch.Tensor, sizes: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    # A seeded numpy permutation, so the split depends on the seed alone.
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    return [x[idx] for idx in torch.split(perm, list(sizes))]

def _sub_seed(seed: int, k: int) -> int:
    # Independent streams per split, so val/test never repeat training points.
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])

def load(source: PathLike, *, n_bits: int | None = None, seed: int = 0,
         val_fraction: float = 0.1, test_fraction: float = 0.1, n_toy: int = 10_000) -> Splits:
    """Load a data set by name or path and split it.

    :param source: a toy name from :data:`TOYS`, ``"digits"``,
        ``"fashion-mnist"``, or the path of a ``.npy`` / ``.npz`` / ``.csv``
        file (see :func:`load_array`).  Names win over files of the same name.
    :param n_bits: for files: the data are integers with ``2**n_bits`` levels.
        For Fashion-MNIST: ``n_bits < 8`` keeps the top bits of each pixel.
        Not allowed for toys (continuous) or digits (17 levels).
    :param seed: fixes the split (and the toy samples); same seed, same data.
    :param val_fraction: share of the examples held out for validation.
        For Fashion-MNIST, the share of the 60000 training images.
    :param test_fraction: share held out for testing; ignored for
        Fashion-MNIST, whose test set is the official 10000 t10k images.
    :param n_toy: total number of toy points over the three splits.
    :raises ValueError: if ``source`` is neither a known name nor a file.
    """
    name = os.fspath(source)
    key = name.lower().replace("-", "_")
    if key in TOYS or key == "digits":
        if n_bits is not None:
            raise ValueError(f"n_bits does not apply to {name!r}: it is not 2**n_bits-level data")
        if key == "digits":
            sizes = _split_sizes(1797, val_fraction, test_fraction)
            train, val, test = _split(load_digits_images(), sizes, seed)
            return Splits("digits", train, val, test, levels=DIGITS_LEVELS)
        sizes = _split_sizes(_count(n_toy), val_fraction, test_fraction)
        train, val, test = (toy(key, m, seed=_sub_seed(seed, k)) for k, m in enumerate(sizes))
        return Splits(key, train, val, test, levels=None)
    if key == "fashion_mnist":
        bits = 8 if n_bits is None else operator.index(n_bits)
        if not 1 <= bits <= 8:
            raise ValueError(f"Fashion-MNIST pixels have 8 bits; n_bits must be 1..8: {n_bits}")
        full, test = load_fashion_mnist()
        if bits < 8:
            # Keeping the top bits, as Glow does for its reduced-depth image benchmarks.
            shift = 2 ** (8 - bits)
            full, test = (torch.div(t, shift, rounding_mode="floor") for t in (full, test))
        train, val = _split(full, _split_sizes(len(full), val_fraction, 0.0)[:2], seed)
        return Splits("fashion-mnist", train, val, test, levels=2**bits)
    if os.path.isfile(name):
        x = load_array(name, n_bits=n_bits)
        train, val, test = _split(x, _split_sizes(len(x), val_fraction, test_fraction), seed)
        return Splits(name, train, val, test, levels=None if n_bits is None else 2**n_bits)
    known = ", ".join((*TOYS, "digits", "fashion-mnist"))
    raise ValueError(f"unknown data set {name!r}: not an existing file, nor one of: {known}")
