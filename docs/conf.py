"""Sphinx configuration for the pyro-flows documentation.

The build never touches the network: intersphinx reads the inventories shipped in
``_intersphinx/`` (regenerate them with ``python docs/_intersphinx/make_inventories.py``), and
the tutorials use only data bundled with scikit-learn or generated in the script.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))  # tutorial_order, the gallery's sort key

project = "pyro-flows"
author = "the pyro-flows developers"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]
exclude_patterns = ["_build", "_ext", "_intersphinx", "tutorials"]
html_theme = "alabaster"
html_theme_options = {"page_width": "1100px", "sidebar_width": "230px"}

# -- API pages ----------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
python_use_unqualified_type_names = True

# -- intersphinx, offline -----------------------------------------------------------------------
_SITES = {
    "python": "https://docs.python.org/3",
    "torch": "https://docs.pytorch.org/docs/stable",
    "pyro": "https://docs.pyro.ai/en/stable",
    "arviz": "https://python.arviz.org/en/stable",
}
intersphinx_mapping = {
    name: (url, str(HERE / "_intersphinx" / f"{name}.inv")) for name, url in _SITES.items()
}
intersphinx_timeout = 1  # never used: every inventory is a local file

# -- tutorials ----------------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "tutorials",
    "gallery_dirs": "auto_tutorials",
    "filename_pattern": r"/plot_",  # every plot_*.py runs; drop one in and it joins the gallery
    "within_subsection_order": "tutorial_order.TutorialOrder",
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "show_memory": False,
}


def _public_bases(app, name, obj, options, bases: list) -> None:
    """Show a class's nearest public ancestors instead of private helpers such as ``_Coupling``."""
    public = []
    for base in bases:
        if not base.__name__.startswith("_"):
            public.append(base)
            continue
        for ancestor in inspect.getmro(base)[1:]:
            if not ancestor.__name__.startswith("_") and ancestor is not object:
                public.append(ancestor)
                break
    bases[:] = list(dict.fromkeys(public))


def setup(app) -> None:
    app.connect("autodoc-process-bases", _public_bases)
