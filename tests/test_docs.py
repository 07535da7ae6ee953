"""The documentation: every public name on an API page, offline intersphinx, no private bases."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sphinx.util.inventory import InventoryFile

import pyro_flows

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _conf():
    spec = importlib.util.spec_from_file_location("pyro_flows_docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def _public_modules():
    """``pyro_flows`` and every module below it, each with its ``__all__``."""
    yield pyro_flows
    for info in pkgutil.walk_packages(pyro_flows.__path__, "pyro_flows."):
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):
            yield module


def _resolve(path: str):
    """The object a dotted path names, read attribute by attribute as Python's own lookup does
    (so ``pyro_flows.transforms.actnorm`` is the factory, not the submodule it shadows); ``None``
    for what exists only on instances (dataclass fields)."""
    first, *rest = path.split(".")
    obj = importlib.import_module(first)
    for attr in rest:
        nxt = getattr(obj, attr, None)
        if nxt is None and inspect.ismodule(obj):
            try:
                nxt = importlib.import_module(f"{obj.__name__}.{attr}")
            except ImportError:
                return None
        obj = nxt
    return obj


_BUILD = """
import json, sys
from sphinx.application import Sphinx
src, out, listing = sys.argv[1:]
app = Sphinx(src, src, out + "/html", out + "/doctrees", "dummy",
             confoverrides={"plot_gallery": "0"}, status=None, warning=None, freshenv=True)
app.build()
objects = app.env.get_domain("py").objects
json.dump([name for name, entry in objects.items()
           if name.startswith("pyro_flows") and entry.objtype != "module"], open(listing, "w"))
"""


@pytest.fixture(scope="module")
def documented(tmp_path_factory) -> dict[str, object]:
    """Every Python object the docs describe, from a build that does not run the tutorials.

    The build runs on a copy of ``docs/`` (sphinx-gallery writes its pages into the source
    tree, and a test must not touch the checkout) and in a subprocess: autodoc rewrites the
    signatures of the functions it documents (``autodoc_preserve_defaults``), which must not
    leak into the other tests."""
    out = tmp_path_factory.mktemp("docs")
    src = out / "docs"
    shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns(
        "_build", "auto_tutorials", "sg_execution_times.rst", "__pycache__"))
    (out / "examples").symlink_to(ROOT / "examples")  # docs/examples.rst includes them
    listing = out / "objects.json"
    subprocess.run([sys.executable, "-c", _BUILD, str(src), str(out), str(listing)], check=True)
    return {name: _resolve(name) for name in json.loads(listing.read_text())}


def test_every_public_name_is_on_an_api_page(documented):
    ids = {id(obj) for obj in documented.values()}
    missing = []
    for module in _public_modules():
        for name in module.__all__:
            path = f"{module.__name__}.{name}"
            obj = getattr(module, name)
            if inspect.ismodule(obj) or path in documented or id(obj) in ids:
                continue
            missing.append(path)
    assert not missing, f"public names on no API page (add them to docs/api/): {missing}"


def test_names_are_documented_where_users_import_them(documented):
    for name in pyro_flows.__all__:
        obj = getattr(pyro_flows, name)
        if not inspect.ismodule(obj):
            assert f"pyro_flows.{name}" in documented
    for module in (pyro_flows.transforms, pyro_flows.infer):
        for name in module.__all__:
            assert f"{module.__name__}.{name}" in documented, f"{module.__name__}.{name}"


def test_shown_bases_are_public():
    conf = _conf()
    for module in _public_modules():
        for name in module.__all__:
            cls = getattr(module, name)
            if not inspect.isclass(cls):
                continue
            bases = list(cls.__bases__)
            conf._public_bases(None, name, cls, {}, bases)
            private = [b.__qualname__ for b in bases if b.__name__.startswith("_")]
            assert not private, f"{module.__name__}.{name} shows private bases {private}"
    class _Private(pyro_flows.transforms.Bijector):
        pass
    class Public(_Private):
        pass
    bases = [_Private]
    conf._public_bases(None, "Public", Public, {}, bases)
    assert bases == [pyro_flows.transforms.Bijector]


def test_intersphinx_is_offline_and_inventories_load():
    conf = _conf()
    expected = {"torch": "torch.Tensor", "pyro": "pyro.distributions.TransformModule",
                "arviz": "arviz.InferenceData", "python": "int"}
    assert set(conf.intersphinx_mapping) == set(expected)
    for name, (url, inventory) in conf.intersphinx_mapping.items():
        assert url.startswith("https://")
        path = Path(inventory)
        assert path.is_file() and path.parent == DOCS / "_intersphinx", inventory
        with path.open("rb") as f:
            inv = InventoryFile.load(f, url, lambda base, uri: f"{base}/{uri}")
        names = {n for role in inv.values() for n in role} if isinstance(inv, dict) else {
            item.name for item in inv}
        assert expected[name] in names, (name, expected[name])
