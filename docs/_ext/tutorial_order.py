"""The order of the tutorials in the gallery: from density models to inference to Pyro's own
tutorials. A script not listed here (a newly dropped-in ``plot_*.py``) comes after the listed
ones, by file name."""

from __future__ import annotations

ORDER = [
    "plot_density_estimation.py",
    "plot_glow_digits.py",
    "plot_autoflow_vs_nuts.py",
    "plot_vae_posterior.py",
    "plot_custom_transform.py",
    "plot_pyro_svi_flow_guide.py",
    "plot_pyro_vae_flow_prior.py",
]


class TutorialOrder:
    """A sphinx-gallery ``within_subsection_order`` key: position in :data:`ORDER`."""

    def __init__(self, src_dir: str) -> None:
        self.src_dir = src_dir

    def __call__(self, filename: str) -> tuple[int, str]:
        rank = ORDER.index(filename) if filename in ORDER else len(ORDER)
        return rank, filename
