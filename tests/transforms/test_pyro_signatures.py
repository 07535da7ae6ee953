"""A Pyro user changes the import and nothing else (issue 11, item 3): every factory with a Pyro
counterpart takes Pyro's positional and keyword arguments."""

from __future__ import annotations

import inspect

import pyro.distributions.transforms as pyro_transforms
import pytest
import torch

from pyro_flows import transforms

COUNTERPARTS = {  # our factory: Pyro's
    "affine_coupling": "affine_coupling",
    "additive_coupling": "affine_coupling",
    "conditional_affine_coupling": "conditional_affine_coupling",
    "conditional_additive_coupling": "conditional_affine_coupling",
    "permute": "permute",
    "permutation": "permute",
}


def _named(signature: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY)]


@pytest.mark.parametrize("ours,theirs", sorted(COUNTERPARTS.items()))
def test_factories_take_pyros_arguments_in_pyros_order(ours, theirs):
    mine = inspect.signature(getattr(transforms, ours))
    pyro = inspect.signature(getattr(pyro_transforms, theirs))
    assert _named(mine) == _named(pyro)
    if any(p.kind is p.VAR_KEYWORD for p in pyro.parameters.values()):
        assert any(p.kind is p.VAR_KEYWORD for p in mine.parameters.values())


def test_the_issue_calls_work():
    """Each raised TypeError before (issue 11)."""
    x = torch.randn(5, 4)
    assert transforms.affine_coupling(4, [16, 16])(x).shape == (5, 4)
    assert transforms.conditional_affine_coupling(4, 3, [16]).condition(
        torch.randn(3))(x).shape == (5, 4)
    t = transforms.affine_coupling(4, split_dim=1)
    assert t.cond_index.tolist() == [0] and t.trans_index.tolist() == [1, 2, 3]
    p = transforms.permutation(4, permutation=torch.tensor([3, 2, 1, 0]))
    assert torch.equal(p(torch.arange(4.0)), torch.tensor([3.0, 2.0, 1.0, 0.0]))


def test_pyro_options_we_do_not_have_are_refused_naming_them():
    with pytest.raises(ValueError, match="dim=-2"):
        transforms.affine_coupling(4, dim=-2)
    with pytest.raises(ValueError, match="split_dim"):
        transforms.affine_coupling(4, split_dim=4)
