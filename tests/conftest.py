"""Shared test set-up: make ``tests/helpers.py`` importable from every test folder, register the
plugin transform of ``tests/plugin.py``, and the ``fresh_pyro`` fixture."""

import os
import sys

import pyro
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import plugin  # noqa: E402,F401  registers the plugin transform the contract test also covers


@pytest.fixture
def fresh_pyro():
    """An empty param store and Pyro's seed at 0 for the test, the store emptied after it."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
