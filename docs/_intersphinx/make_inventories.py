"""Write the intersphinx inventories the documentation build reads instead of downloading them.

The build runs offline, and neither torch, pyro-ppl nor arviz ships its ``objects.inv`` in its
wheel, so this script writes small ones from the installed packages: every public class and
function of the modules our docs link to, under its public path and under the path Sphinx
prints in signatures (``obj.__module__``), each pointing at the page of the project's own site
where that name is documented. Rerun it after upgrading one of those packages::

    python docs/_intersphinx/make_inventories.py
"""

from __future__ import annotations

import importlib
import inspect
import os
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

HERE = Path(__file__).resolve().parent

# (module, page of a name's documentation as a function of its public path, whether the site's
# anchor is the home path ``obj.__module__ + "." + qualname`` rather than the public path),
# following each site's layout.
Rule = tuple[str, Callable[[str], str], bool]


def _generated(name: str) -> str:
    return f"generated/{name}.html"


TORCH: list[Rule] = [
    ("torch", lambda n: {"torch.Tensor": "tensors.html", "torch.Size": "size.html",
                         "torch.dtype": "tensor_attributes.html",
                         "torch.device": "tensor_attributes.html"}.get(n, _generated(n)), False),
    ("torch.nn", _generated, False),
    ("torch.nn.functional", _generated, False),
    ("torch.nn.init", lambda n: "nn.init.html", False),
    ("torch.optim", lambda n: "optim.html" if n == "torch.optim.Optimizer" else _generated(n), False),
    ("torch.optim.lr_scheduler", _generated, False),
    ("torch.distributions", lambda n: "distributions.html", True),
    ("torch.distributions.transforms", lambda n: "distributions.html", True),
    ("torch.distributions.constraints", lambda n: "distributions.html", True),
    ("torch.utils.data", lambda n: "data.html", False),
    ("torch.autograd", lambda n: "autograd.html", False),
]
PYRO: list[Rule] = [
    ("pyro", lambda n: "primitives.html", False),
    ("pyro.distributions", lambda n: "distributions.html", False),
    ("pyro.distributions.transforms", lambda n: "distributions.html", False),
    ("pyro.infer.mcmc", lambda n: "mcmc.html", True),
    ("pyro.infer", lambda n: "mcmc.html" if n.rsplit(".", 1)[1] in ("MCMC", "NUTS", "HMC")
     else "inference_algos.html", True),
    ("pyro.infer.autoguide", lambda n: "infer.autoguide.html", False),
    ("pyro.infer.reparam", lambda n: "infer.reparam.html", True),
    ("pyro.nn", lambda n: "nn.html", False),
    ("pyro.optim", lambda n: "optimization.html", False),
    ("pyro.poutine", lambda n: "poutine.html", False),
]
ARVIZ: list[Rule] = [("arviz", lambda n: f"api/generated/{n}.html", False)]
PYTHON_NAMES = {  # the handful of standard names our signatures show
    "int": ("class", "library/functions.html#int"),
    "float": ("class", "library/functions.html#float"),
    "bool": ("class", "library/functions.html#bool"),
    "str": ("class", "library/stdtypes.html#str"),
    "dict": ("class", "library/stdtypes.html#dict"),
    "list": ("class", "library/stdtypes.html#list"),
    "tuple": ("class", "library/stdtypes.html#tuple"),
    "object": ("class", "library/functions.html#object"),
    "None": ("data", "library/constants.html#None"),
    "typing.Any": ("data", "library/typing.html#typing.Any"),
    "typing.Callable": ("data", "library/typing.html#typing.Callable"),
    "typing.Iterator": ("class", "library/typing.html#typing.Iterator"),
    "typing.NamedTuple": ("class", "library/typing.html#typing.NamedTuple"),
    "collections.abc.Callable": ("class", "library/collections.abc.html#collections.abc.Callable"),
    "collections.abc.Sequence": ("class", "library/collections.abc.html#collections.abc.Sequence"),
    "collections.abc.Iterator": ("class", "library/collections.abc.html#collections.abc.Iterator"),
    "os.PathLike": ("class", "library/os.html#os.PathLike"),
    "pathlib.Path": ("class", "library/pathlib.html#pathlib.Path"),
}


def _public_names(module) -> Iterator[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    for name in sorted(set(names)):
        obj = getattr(module, name, None)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
            yield name


def _entries(rules: list[Rule]) -> dict[str, tuple[str, str]]:
    """``{name: (role, uri)}``; a name's first rule wins, so list a subpackage before the
    package that re-exports its names."""
    out: dict[str, tuple[str, str]] = {}
    for module_name, page, anchor_is_home in rules:
        module = importlib.import_module(module_name)
        for name in _public_names(module):
            obj = getattr(module, name)
            public = f"{module_name}.{name}"
            home_module = getattr(obj, "__module__", None) or module_name
            qual = getattr(obj, "__qualname__", name)
            home = f"{home_module}.{qual}"
            if "<" in qual or not home_module.startswith(module_name.split(".")[0]):
                home = public  # re-exported from another package, or made in a closure
            role = "class" if inspect.isclass(obj) else "function"
            uri = f"{page(public)}#{home if anchor_is_home else public}"
            out.setdefault(public, (role, uri))
            # Sphinx prints a type hint by the object's home module, e.g.
            # torch.nn.modules.module.Module: make that path lead to the same page.
            out.setdefault(home, (role, uri))
    return out


def write_inventory(path: Path, project: str, version: str,
                    entries: dict[str, tuple[str, str]]) -> None:
    """Write a version-2 Sphinx inventory (the ``objects.inv`` format), atomically."""
    lines = [f"{name} py:{role} 1 {uri} -" for name, (role, uri) in sorted(entries.items())]
    header = (f"# Sphinx inventory version 2\n# Project: {project}\n# Version: {version}\n"
              "# The remainder of this file is compressed using zlib.\n").encode()
    body = zlib.compress(("\n".join(lines) + "\n").encode())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(header + body)
    os.replace(tmp, path)


def main() -> None:
    import arviz
    import pyro
    import torch

    write_inventory(HERE / "torch.inv", "PyTorch", torch.__version__.split("+")[0],
                    _entries(TORCH))
    write_inventory(HERE / "pyro.inv", "Pyro", pyro.__version__, _entries(PYRO))
    write_inventory(HERE / "arviz.inv", "ArviZ", arviz.__version__, _entries(ARVIZ))
    write_inventory(HERE / "python.inv", "Python", "3", PYTHON_NAMES)
    for name in ("torch", "pyro", "arviz", "python"):
        size = (HERE / f"{name}.inv").stat().st_size
        print(f"{name}.inv: {size} bytes")


if __name__ == "__main__":
    main()
