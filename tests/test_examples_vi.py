"""The variational-inference examples run end to end in smoke mode (as CI runs them) and return
numbers and pictures that make sense: k-hats, moment tables against NUTS or exact draws, VAE
bounds in the right order, PNG files."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from pyro_flows.data import FASHION_MNIST_ENV, FASHION_MNIST_ROOT

# Each example trains a few hundred steps or an epoch: about 20 to 60 s apiece on 2 cores.
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the defining module up in sys.modules while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def assert_png(path: Path, directory: Path) -> None:
    path = Path(path)
    assert path.parent == directory
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 10_000  # a drawn figure, not an empty canvas
    assert not list(directory.glob(".tmp-*")), "a temporary file was left behind"


def test_funnel_smoke(tmp_path):
    threads = torch.get_num_threads()
    result = load_example("funnel").main(["--smoke", "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads  # the example restores the thread count
    assert set(result["khat"]) == {"AutoNormal", "AutoFlow"}
    assert all(math.isfinite(k) for k in result["khat"].values())
    table = result["table"]
    assert set(table.index.get_level_values("method")) == {"AutoNormal", "AutoFlow", "NUTS"}
    assert table.notna().all().all()
    # y ~ N(0, 3) exactly: the reference's sd must say so, and a Gaussian guide fitted by
    # KL(q || p) is narrower than the funnel.
    assert table.loc[("AutoNormal", "y"), "sd_exact"] == pytest.approx(3.0, rel=0.15)
    assert table.loc[("AutoNormal", "y"), "sd_ratio"] < 1.0
    assert result["divergences"] >= 0
    assert_png(result["figure"], tmp_path)


def test_eight_schools_smoke(tmp_path):
    result = load_example("eight_schools").main(["--smoke", "--out", str(tmp_path)])
    assert set(result["khat"]) == {"AutoNormal", "AutoFlow"}
    assert all(math.isfinite(k) for k in result["khat"].values())
    table = result["table"]
    params = ["mu", "tau"] + [f"theta_tilde[{j}]" for j in range(8)]
    for method in ("AutoNormal", "AutoFlow"):
        assert list(table.loc[method].index) == params
    assert table.notna().all().all() and (table[["sd_vi", "sd_mcmc"]] > 0).all().all()
    # NUTS's posterior mean of the effect is positive (the data average to about 8).
    assert table.loc[("AutoFlow", "mu"), "mean_mcmc"] > 0
    assert_png(result["figure"], tmp_path)


def check_vae(result: dict, tmp_path: Path) -> None:
    sizes = result["sizes"]
    for name in ("gaussian", "flow"):
        history = result["history"][name]
        assert len(history) == sizes.epochs and all(math.isfinite(v) for v in history)
        assert result["elbo"][name] < 0 < result["nll"][name]
        # IWAE(k) is a tighter bound on log p(x) than the ELBO, on the same test images.
        assert result["iwae_minus_elbo"][name] > 0
    assert math.isfinite(result["nll_gain"]) and result["nll_gain_se"] >= 0
    names = sorted(Path(p).name for p in result["figures"])
    assert names == ["reconstructions.png", "samples.png"]
    for path in result["figures"]:
        assert_png(path, tmp_path)


def test_vae_digits_smoke(tmp_path):
    result = load_example("vae_flow").main(["--data", "digits", "--smoke", "--out",
                                            str(tmp_path)])
    check_vae(result, tmp_path)
    # Three epochs on digits are enough to learn something.
    for history in result["history"].values():
        assert history[-1] > history[0]


def fashion_mnist_installed() -> bool:
    root = Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_ROOT)
    return any(root.glob("t10k-images-idx3-ubyte*"))


@pytest.mark.skipif(not fashion_mnist_installed(), reason="Fashion-MNIST is not installed")
def test_vae_fashion_mnist_smoke(tmp_path):
    result = load_example("vae_flow").main(["--smoke", "--out", str(tmp_path)])
    check_vae(result, tmp_path)
