"""Sphinx configuration for the pyro-flows documentation."""

project = "pyro-flows"
author = "the pyro-flows developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "show-inheritance": True}
html_theme = "alabaster"
exclude_patterns = ["_build"]
nitpicky = False
