"""pyro_flows.plots: PNGs written without touching the caller's matplotlib set-up."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from pyro_flows import plots


@pytest.fixture
def svg_backend():
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield
    matplotlib.use(before)


def test_plots_leave_the_callers_backend_alone(tmp_path, svg_backend):
    """A user (a notebook, a GUI) keeps the backend they chose: drawing our PNGs never switches
    the process to another one."""
    plots.loss_curve({"train_loss": [2.0, 1.5], "val_loss": [2.1, 1.6]}, tmp_path / "loss.png")
    plots.image_grid(torch.rand(4, 1, 8, 8) * 16, tmp_path / "grid.png", levels=17, title="t")
    data = torch.randn(50, 2)
    plots.density_plot(lambda x: -x.square().sum(-1) / 2, data, data, tmp_path / "density.png")
    assert matplotlib.get_backend() == "svg"
    for name in ("loss.png", "grid.png", "density.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_pyplot_figure_is_saved_and_closed(tmp_path, svg_backend):
    """``save_figure`` also takes a figure made with pyplot, and closes it."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    plots.save_figure(fig, tmp_path / "mine.png")
    assert (tmp_path / "mine.png").read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number)


def test_loss_curve_marks_whole_epochs(tmp_path):
    """Epochs are counted in whole numbers: a short run's axis has no 1.5th epoch."""
    from unittest import mock
    saved = {}
    with mock.patch.object(plots, "save_figure", lambda fig, path: saved.setdefault("fig", fig)):
        plots.loss_curve({"train_loss": [2.0, 1.5, 1.2]}, tmp_path / "loss.png")
    fig = saved["fig"]
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
