"""Shared test set-up: make ``tests/helpers.py`` importable from every test folder, and register
the plugin transform of ``tests/plugin.py``."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import plugin  # noqa: E402,F401  registers the plugin transform the contract test also covers
