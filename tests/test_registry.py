"""Behaviour of the registry: names, errors, registration, and plugins found through a real
``pyro_flows.transforms`` entry point of an installed distribution."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

import pyro_flows
from pyro_flows import registry
from pyro_flows.transforms import (
    ActNorm,
    AffineCoupling,
    ConditionalAffineCoupling,
    ConditionalGlow,
    Glow,
    MultiScaleFlow,
    Scaling,
)

BUILT_INS = {
    "actnorm", "additive_coupling", "affine_coupling", "scaling", "invertible_linear",
    "invertible_conv1x1", "permutation", "squeeze", "glow_step", "nice", "realnvp", "glow",
    "conditional_additive_coupling", "conditional_affine_coupling", "conditional_nice",
    "conditional_realnvp", "conditional_glow",
}


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made by a test disappear with it."""
    monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    return registry


def test_available_is_sorted_and_holds_every_built_in():
    names = pyro_flows.available()
    assert names == sorted(names)
    assert BUILT_INS <= set(names)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises((KeyError, ValueError)) as err:
        pyro_flows.build("no_such_flow", event_shape=(3,))
    message = str(err.value)
    assert "no_such_flow" in message
    assert all(name in message for name in ("actnorm", "conditional_glow", "squeeze"))


@pytest.mark.parametrize("name,shape", [
    ("squeeze", (4,)), ("invertible_linear", (2, 4, 4)), ("permutation", (1, 2, 2)),
    ("glow", (2, 4)), ("affine_coupling", (1, 2, 3, 4)),
])
def test_wrong_rank_is_rejected_naming_the_shape(name, shape):
    with pytest.raises(ValueError) as err:
        pyro_flows.build(name, event_shape=shape)
    assert str(shape) in str(err.value) and name in str(err.value)


def test_build_passes_keyword_arguments_by_event_rank():
    realnvp = pyro_flows.build("realnvp", event_shape=3, num_layers=2, hidden_dims=(8,))
    assert sum(isinstance(p, AffineCoupling) for p in realnvp.parts) == 2
    image = pyro_flows.build("glow", event_shape=(1, 8, 8), levels=2, steps=1, hidden_channels=4)
    assert isinstance(image, Glow) and len(image.levels) == 2
    nice = pyro_flows.build("nice", event_shape=(1, 4, 4), levels=1, steps=1, hidden_channels=4)
    assert isinstance(nice, MultiScaleFlow) and nice.kind == "nice" and type(nice.levels[0][0]).__name__ == "AdditiveCoupling"
    assert isinstance(pyro_flows.build("actnorm", event_shape=(2, 4, 4)), ActNorm)


def test_conditional_names_take_a_context_dim():
    t = pyro_flows.build("conditional_affine_coupling", event_shape=(4,), context_dim=3)
    assert isinstance(t, ConditionalAffineCoupling) and t.context_dim == 3
    assert t.condition(torch.zeros(3))(torch.zeros(2, 4)).shape == (2, 4)
    g = pyro_flows.build("conditional_glow", event_shape=(1, 4, 4), context_dim=2, levels=1,
                         steps=1, hidden_channels=4)
    assert isinstance(g, ConditionalGlow) and g.context_dim == 2


@pytest.mark.parametrize("name", ["conditional_affine_coupling", "conditional_realnvp",
                                  "conditional_glow"])
def test_conditional_names_without_a_context_dim_are_refused(name):
    """Issue 9: build("conditional_*") used to set context_dim=1 quietly."""
    with pytest.raises(ValueError, match="context_dim"):
        pyro_flows.build(name, event_shape=(4,))


def test_duplicate_registration_is_rejected_unless_replacing(isolated_registry):
    @pyro_flows.register("pf_test_dup", event_dims=(1,))
    def first(event_shape, **kwargs):
        return Scaling(event_shape)

    with pytest.raises(ValueError, match="pf_test_dup"):
        pyro_flows.register("pf_test_dup")(first)
    with pytest.raises(ValueError, match="actnorm"):
        pyro_flows.register("actnorm")(first)

    @pyro_flows.register("pf_test_dup", event_dims=(1,), replace=True)
    def second(event_shape, **kwargs):
        return ActNorm(event_shape)

    assert isinstance(pyro_flows.build("pf_test_dup", event_shape=(3,)), ActNorm)


def test_builder_returning_a_non_transform_is_rejected(isolated_registry):
    pyro_flows.register("pf_test_bad")(lambda event_shape, **kwargs: torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="pf_test_bad"):
        pyro_flows.build("pf_test_bad", event_shape=(2,))


PLUGIN_MODULES = {
    # A builder entry point, restricted to vectors by its ``event_dims`` attribute.
    "pf_dummy_plugin": """
        from pyro_flows.transforms import Scaling

        def build_dummy(event_shape, **kwargs):
            return Scaling(event_shape)

        build_dummy.event_dims = (1,)
    """,
    # A module entry point that registers its transform when imported.
    "pf_dummy_module_plugin": """
        import pyro_flows
        from pyro_flows.transforms import Squeeze

        @pyro_flows.register("pf_dummy_squeeze", event_dims=(3,))
        def build_squeeze(event_shape, **kwargs):
            return Squeeze(event_shape)
    """,
}
ENTRY_POINTS = """
    [pyro_flows.transforms]
    pf_dummy = pf_dummy_plugin:build_dummy
    pf_dummy_squeeze = pf_dummy_module_plugin
    actnorm = pf_dummy_plugin:build_dummy
"""


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch, isolated_registry):
    """A distribution with ``pyro_flows.transforms`` entry points, importable from sys.path, and
    a registry that has not looked for plugins yet."""
    for name, source in PLUGIN_MODULES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    info = tmp_path / "pf_dummy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pf-dummy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS).lstrip())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    yield
    for name in PLUGIN_MODULES:
        sys.modules.pop(name, None)


def test_builder_plugin_is_listed_and_builds(installed_plugin):
    assert "pf_dummy" in pyro_flows.available()
    t = pyro_flows.build("pf_dummy", event_shape=(3,))
    assert isinstance(t, Scaling) and t.event_shape == (3,)
    with pytest.raises(ValueError, match=r"\(1, 2, 2\); a whole flow for those is realnvp or glow"):
        pyro_flows.build("pf_dummy", event_shape=(1, 2, 2))


def test_module_plugin_registers_on_import(installed_plugin):
    assert "pf_dummy_module_plugin" not in sys.modules
    assert pyro_flows.build("pf_dummy_squeeze", event_shape=(1, 4, 4))(
        torch.zeros(1, 4, 4)).shape == (4, 2, 2)
    assert "pf_dummy_squeeze" in pyro_flows.available()


def test_plugin_cannot_shadow_a_built_in(installed_plugin):
    assert isinstance(pyro_flows.build("actnorm", event_shape=(3,)), ActNorm)
    pyro_flows.available()  # loads every plugin
    assert isinstance(pyro_flows.build("actnorm", event_shape=(3,)), ActNorm)

