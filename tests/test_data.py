"""Tests for pyro_flows.data: toys, digits, IDX/Fashion-MNIST, user files, load()."""

from __future__ import annotations

import gzip
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_flows import data
from pyro_flows.data import Splits

REAL_FASHION = Path(data.FASHION_MNIST_ROOT)


def write_idx(path: Path, array: np.ndarray, code: int, compress: bool = False) -> Path:
    """Write ``array`` as IDX with the given type code (big-endian, as the format says)."""
    big = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + np.ascontiguousarray(array, dtype=big).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def fashion_dir(root: Path, n_train: int = 7, n_test: int = 3, compress: bool = True) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for stem, n in (("train-images-idx3-ubyte", n_train), ("t10k-images-idx3-ubyte", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(root / f"{stem}{suffix}", images, 0x08, compress=compress)
    return root


# Toys ------------------------------------------------------------------------

@pytest.mark.parametrize("name", data.TOYS)
def test_toy_shape_dtype_finite_scale(name):
    x = data.toy(name, 2000, seed=1)
    assert x.shape == (2000, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    # Roughly standardized: centred near 0, spread O(1), nothing far out.
    assert x.mean(0).abs().max() < 0.5
    assert ((x.std(0) > 0.5) & (x.std(0) < 3.0)).all()
    assert x.abs().max() < 6.0


@pytest.mark.parametrize("name", data.TOYS)
def test_toy_seed_determinism(name):
    assert torch.equal(data.toy(name, 500, seed=3), data.toy(name, 500, seed=3))
    assert not torch.equal(data.toy(name, 500, seed=3), data.toy(name, 500, seed=4))
    # Named functions and toy() agree.
    assert torch.equal(getattr(data, name)(100, seed=5), data.toy(name, 100, seed=5))


@pytest.mark.parametrize("name", data.TOYS)
def test_toy_odd_and_empty_sizes(name):
    assert data.toy(name, 7).shape == (7, 2)
    assert data.toy(name, 0).shape == (0, 2)
    with pytest.raises(ValueError):
        data.toy(name, -1)


def test_toy_structure():
    # Eight Gaussians: every point is near one of 8 centres at radius 4/sqrt(2).
    x = data.eight_gaussians(4000).numpy()
    angles = np.arange(8) * math.pi / 4
    centres = 4 / math.sqrt(2) * np.stack([np.cos(angles), np.sin(angles)], 1)
    nearest = np.linalg.norm(x[:, None] - centres[None], axis=2).min(1)
    assert np.median(nearest) < 0.6
    # Checkerboard: inside [-4, 4]^2 and only on dark squares.
    c = data.checkerboard(4000).numpy()
    assert (np.abs(c) <= 4).all()
    cells = np.floor((c + 4) / 2).astype(int)
    assert (cells.sum(1) % 2 == 0).all()
    assert len({tuple(c) for c in cells}) == 8
    # Circles: two radii.
    r = np.linalg.norm(data.circles(4000).numpy(), axis=1)
    assert ((np.abs(r - 3) < 0.8) | (np.abs(r - 1.5) < 0.8)).mean() > 0.99


def test_unknown_toy():
    with pytest.raises(ValueError, match="two_moons"):
        data.toy("banana", 10)


# Digits ------------------------------------------------------------------------

def test_digits_images():
    pytest.importorskip("sklearn")
    x = data.load_digits_images()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 16
    assert torch.equal(x, x.round())
    assert data.DIGITS_LEVELS == 17


# IDX -------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
                   (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)]
)
def test_read_idx_round_trip(tmp_path, compress, code, dtype):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = write_idx(tmp_path / ("a.idx.gz" if compress else "a.idx"), array, code, compress)
    out = data.read_idx(path)
    assert out.dtype == dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def test_read_idx_one_dim(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / "l", labels, 0x08)), labels)


def test_read_idx_corrupt_files_name_the_file(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((4, 6, 6), np.uint8), 0x08).read_bytes()
    cases = {
        "truncated_data": good[:-5],
        "trailing": good + b"\x00",
        "truncated_header": good[:9],
        "bad_magic": b"\x01\x02" + good[2:],
        "bad_type": good[:2] + b"\x07" + good[3:],
        "empty": b"",
        "zero_dims": b"\x00\x00\x08\x00",
        "truncated_gzip": gzip.compress(good)[:-12],
        "corrupt_gzip": gzip.compress(good)[:12] + b"\xff" * 40,
        "bad_crc": gzip.compress(good)[:-8] + b"\x00" * 8,
    }
    # Flipping the first deflate block header makes zlib itself fail (zlib.error).
    deflated = gzip.compress(good)
    cases["bad_deflate"] = deflated[:10] + bytes([deflated[10] ^ 0xFF]) + deflated[11:]
    for name, raw in cases.items():
        path = tmp_path / f"{name}.gz"
        path.write_bytes(raw)
        with pytest.raises(ValueError, match=name):
            data.read_idx(path)


# Fashion-MNIST ---------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_load_fashion_mnist_synthetic(tmp_path, compress):
    root = fashion_dir(tmp_path / "fm", compress=compress)
    train, test = data.load_fashion_mnist(root)
    assert train.shape == (7, 1, 28, 28) and test.shape == (3, 1, 28, 28)
    assert train.dtype == torch.float32
    raw = data.read_idx(next(root.glob("train-images*")))
    assert torch.equal(train[:, 0], torch.from_numpy(raw).float())
    assert 0 <= train.min() and train.max() <= 255


def test_load_fashion_mnist_env_override_and_load(tmp_path, monkeypatch):
    root = fashion_dir(tmp_path / "fm", n_train=20, n_test=5)
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(root))
    train, _ = data.load_fashion_mnist()
    assert len(train) == 20
    ds = data.load("fashion-mnist", val_fraction=0.25, seed=1)
    assert ds.levels == 256 and ds.kind == "image" and ds.event_shape == (1, 28, 28)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (15, 5, 5)
    assert torch.equal(ds.test, data.load_fashion_mnist(root)[1])  # official test set untouched
    low = data.load("fashion-mnist", n_bits=5, val_fraction=0.25, seed=1)
    assert low.levels == 32 and low.train.max() <= 31
    assert torch.equal(low.train, torch.div(ds.train, 8, rounding_mode="floor"))


def test_load_fashion_mnist_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist(tmp_path / "nowhere")


def test_load_fashion_mnist_wrong_shape(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 5, 5), np.uint8), 0x08)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 5, 5), np.uint8), 0x08)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        data.load_fashion_mnist(tmp_path)


@pytest.mark.skipif(
    not (REAL_FASHION / "t10k-images-idx3-ubyte.gz").exists()
    and not (REAL_FASHION / "t10k-images-idx3-ubyte").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    train, test = data.load_fashion_mnist(REAL_FASHION)
    assert train.shape == (60000, 1, 28, 28) and test.shape == (10000, 1, 28, 28)
    assert test.min() == 0 and test.max() == 255
    assert torch.equal(test, test.round())


# User files ------------------------------------------------------------------

def test_load_array_npy_vectors_and_images(tmp_path):
    v = np.random.default_rng(0).standard_normal((10, 3))
    np.save(tmp_path / "v.npy", v)
    x = data.load_array(tmp_path / "v.npy")
    assert x.dtype == torch.float32 and x.shape == (10, 3)
    np.testing.assert_allclose(x.numpy(), v, rtol=1e-6)
    np.save(tmp_path / "i.npy", np.zeros((4, 3, 5, 5), np.uint8))
    assert data.load_array(tmp_path / "i.npy").shape == (4, 3, 5, 5)


def test_load_array_refuses_three_axes(tmp_path):
    # (N, C, H) or (N, H, W)? Guessing trained (N, C, H) arrays as (N, 1, C, H) images.
    np.save(tmp_path / "g.npy", np.arange(2 * 4 * 4).reshape(2, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 4, 4\) are ambiguous.*\(N, 1, H, W\)"):
        data.load_array(tmp_path / "g.npy", n_bits=5)


def test_load_array_empty_file_is_named(tmp_path):
    (tmp_path / "e.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="e.npy: empty or truncated"):
        data.load_array(tmp_path / "e.npy")


def test_load_array_npz_keys(tmp_path):
    a, b = np.ones((3, 2)), np.zeros((5, 2))
    np.savez(tmp_path / "x.npz", other=b, x=a)
    assert data.load_array(tmp_path / "x.npz").shape == (3, 2)
    np.savez(tmp_path / "d.npz", data=b, labels=np.arange(5))
    assert data.load_array(tmp_path / "d.npz").shape == (5, 2)
    np.savez(tmp_path / "one.npz", whatever=b)
    assert data.load_array(tmp_path / "one.npz").shape == (5, 2)
    np.savez(tmp_path / "two.npz", first=a, second=b)
    with pytest.raises(ValueError, match="first, second"):
        data.load_array(tmp_path / "two.npz")


def test_load_array_csv(tmp_path):
    (tmp_path / "h.csv").write_text("a,b,c\n1,2,3\n4,5,6\n")
    x = data.load_array(tmp_path / "h.csv")
    assert torch.equal(x, torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    (tmp_path / "n.csv").write_text("1.5,2\n-3,4e1\n7,8\n")
    x = data.load_array(tmp_path / "n.csv")
    assert x.shape == (3, 2) and x[1, 1] == 40.0
    (tmp_path / "col.csv").write_text("1\n2\n3\n")
    assert data.load_array(tmp_path / "col.csv").shape == (3, 1)
    (tmp_path / "bad.csv").write_text("1,2\n3,oops\n")
    with pytest.raises(ValueError, match="bad.csv"):
        data.load_array(tmp_path / "bad.csv")


def test_load_array_n_bits_out_of_range(tmp_path):
    np.save(tmp_path / "r.npy", np.array([[0, 255, 256], [-1, 3, 2.5]]))
    with pytest.raises(ValueError, match=r"3 of 6 entries.*\[0, 255\]"):
        data.load_array(tmp_path / "r.npy", n_bits=8)
    assert data.load_array(tmp_path / "r.npy").shape == (2, 3)  # fine as continuous data
    with pytest.raises(ValueError, match="n_bits"):
        data.load_array(tmp_path / "r.npy", n_bits=0)


def test_load_array_non_finite(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0], [np.inf, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2 entries are not finite.*drop or impute"):
        data.load_array(tmp_path / "nan.npy")
    (tmp_path / "nan.csv").write_text("x,y\nnan,1\n2,3\n")
    with pytest.raises(ValueError, match="1 entries are not finite"):
        data.load_array(tmp_path / "nan.csv")


def test_load_array_refuses_pickle(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([[1, "a"], [None, 2]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy"):
        data.load_array(tmp_path / "obj.npy")


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5, 6), (0, 3)])
def test_load_array_bad_shape(tmp_path, shape):
    np.save(tmp_path / "s.npy", np.zeros(shape))
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        data.load_array(tmp_path / "s.npy")


def test_load_array_bad_type(tmp_path):
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match="unsupported"):
        data.load_array(tmp_path / "x.txt")
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="real numbers"):
        data.load_array(tmp_path / "str.npy")


# load() ----------------------------------------------------------------------

def test_load_toy_splits():
    ds = data.load("two_moons", n_toy=1000, seed=2)
    assert isinstance(ds, Splits) and ds.kind == "vector" and ds.event_shape == (2,)
    assert ds.levels is None
    assert (len(ds.train), len(ds.val), len(ds.test)) == (800, 100, 100)
    again = data.load("two-moons", n_toy=1000, seed=2)
    assert all(torch.equal(getattr(ds, s), getattr(again, s)) for s in ("train", "val", "test"))
    assert not torch.equal(ds.train, data.load("two_moons", n_toy=1000, seed=3).train)
    # Separate draws: no validation point repeats a training point.
    assert torch.cdist(ds.val, ds.train).min() > 0


def test_load_digits_split_deterministic_disjoint():
    pytest.importorskip("sklearn")
    ds = data.load("digits", seed=7, val_fraction=0.2, test_fraction=0.1)
    assert ds.levels == 17 and ds.kind == "image" and ds.event_shape == (1, 8, 8)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1258, 359, 180)
    full = data.load_digits_images().flatten(1)
    # Together the splits are a permutation of the full set.
    joined = torch.cat([ds.train, ds.val, ds.test]).flatten(1)
    assert sorted(map(tuple, joined.tolist())) == sorted(map(tuple, full.tolist()))
    same = data.load("digits", seed=7, val_fraction=0.2, test_fraction=0.1)
    assert torch.equal(ds.val, same.val) and torch.equal(ds.test, same.test)
    assert not torch.equal(ds.val, data.load("digits", seed=8, val_fraction=0.2).val)
    with pytest.raises(ValueError, match="n_bits"):
        data.load("digits", n_bits=4)


def test_load_file_split_disjoint(tmp_path):
    x = np.arange(200 * 3).reshape(200, 3)  # rows are unique, so overlap is detectable
    np.save(tmp_path / "u.npy", x)
    kw = dict(n_bits=10, val_fraction=0.15, test_fraction=0.05)
    ds = data.load(str(tmp_path / "u.npy"), seed=0, **kw)
    assert ds.levels == 1024 and ds.kind == "vector"
    assert (len(ds.train), len(ds.val), len(ds.test)) == (160, 30, 10)
    ids = [set(t[:, 0].long().tolist()) for t in (ds.train, ds.val, ds.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == set(range(0, 600, 3))
    again = data.load(tmp_path / "u.npy", seed=0, **kw)
    assert torch.equal(ds.train, again.train) and torch.equal(ds.test, again.test)
    other = data.load(tmp_path / "u.npy", seed=1, **kw)
    assert not torch.equal(ds.val, other.val)


def test_load_bad_fractions(tmp_path):
    with pytest.raises(ValueError, match="no training data"):
        data.load("circles", n_toy=10, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="fractions"):
        data.load("circles", val_fraction=-0.1)


def test_load_unknown_name_lists_known(tmp_path):
    with pytest.raises(ValueError) as info:
        data.load(str(tmp_path / "missing.npy"))
    for name in (*data.TOYS, "digits", "fashion-mnist"):
        assert name in str(info.value)


def test_dataset_validation_and_repr():
    x = torch.zeros(4, 2)
    ds = Splits("z", x, x[:1], x[:0], None)
    assert "train=4" in repr(ds) and ds.event_shape == (2,)
    with pytest.raises(TypeError):
        Splits("z", x.double(), x, x)
    with pytest.raises(ValueError, match="event shape"):
        Splits("z", x, torch.zeros(1, 3), x)
    with pytest.raises(ValueError):
        Splits("z", x, x, x, levels=1)
    with pytest.raises(AttributeError):
        ds.name = "other"  # frozen


def test_fit_on_loaded_splits_names_train():
    # fit(model, pyro_flows.data.load("two_moons")) raised a bare TypeError (issue 11).
    from pyro_flows import FlowModel, fit
    from pyro_flows.data import load

    splits = load("two_moons", n_toy=200)
    model = FlowModel.build("realnvp", (2,), num_layers=2, hidden_dims=[8])
    with pytest.raises(TypeError, match=r"pyro_flows\.data\.Splits pass \.train"):
        fit(model, splits)


def test_splits_does_not_shadow_torch_dataset():
    import pyro_flows.data

    assert not hasattr(pyro_flows.data, "Dataset")
