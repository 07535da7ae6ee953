"""Behaviour of the volume-preserving rearrangements: where Squeeze puts each pixel, and which
permutations Permutation accepts."""

from __future__ import annotations

import pytest
import torch

from pyro_flows.transforms import Permutation, Squeeze


def test_squeeze_and_unsqueeze_are_exact_inverses():
    t = Squeeze((3, 4, 6))
    x = torch.randn(2, 5, 3, 4, 6, dtype=torch.float64)
    y = t(x)
    assert y.shape == (2, 5, 12, 2, 3)
    assert torch.equal(t.with_cache(0).inv(y), x)
    z = torch.randn(7, 12, 2, 3, dtype=torch.float64)
    assert torch.equal(t.with_cache(0)(t.inv(z)), z)
    assert torch.equal(t.log_abs_det_jacobian(x, y), torch.zeros(2, 5, dtype=torch.float64))


def test_a_two_by_two_patch_becomes_four_channels():
    patch = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    y = Squeeze((1, 2, 2))(patch)
    assert y.shape == (4, 1, 1)
    assert sorted(y.flatten().tolist()) == [1.0, 2.0, 3.0, 4.0]


def test_every_output_channel_takes_one_fixed_offset_of_each_patch():
    c, h, w = 2, 4, 6
    x = torch.arange(c * h * w, dtype=torch.float64).reshape(c, h, w)
    y = Squeeze((c, h, w))(x)
    source = torch.stack(torch.unravel_index(y.long(), (c, h, w)))  # (3, 4c, h/2, w/2)
    rows = torch.arange(h // 2)[:, None].expand(h // 2, w // 2)
    cols = torch.arange(w // 2)[None, :].expand(h // 2, w // 2)
    offsets = set()
    for k in range(4 * c):
        src_c, src_h, src_w = source[:, k]
        # Output pixel (i, j) gathers from the input patch at (2i, 2j) ...
        assert torch.equal(src_h // 2, rows) and torch.equal(src_w // 2, cols)
        # ... and channel k always from the same channel and the same corner of that patch.
        offset = {(a.item(), b.item(), d.item()) for a, b, d in zip(src_c.flatten(),
                                                                    (src_h % 2).flatten(),
                                                                    (src_w % 2).flatten())}
        assert len(offset) == 1
        offsets |= offset
    assert len(offsets) == 4 * c


@pytest.mark.parametrize("shape", [(1, 3, 4), (1, 4, 5), (2, 1, 2)])
def test_odd_height_or_width_is_rejected_naming_the_shape(shape):
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        Squeeze(shape)


def test_squeeze_rejects_inputs_of_the_wrong_shape():
    t = Squeeze((1, 4, 4))
    with pytest.raises(ValueError, match=r"\(1, 4, 4\).*\(2, 1, 4, 6\)"):
        t(torch.zeros(2, 1, 4, 6))
    with pytest.raises(ValueError, match=r"\(4, 2, 2\).*\(1, 4, 4\)"):
        t.inv(torch.zeros(1, 4, 4))


def test_permutation_moves_features_as_given():
    t = Permutation(4, permutation=torch.tensor([2, 0, 3, 1]))
    x = torch.tensor([[10.0, 11.0, 12.0, 13.0]])
    y = t(x)
    assert torch.equal(y, torch.tensor([[12.0, 10.0, 13.0, 11.0]]))
    assert torch.equal(t.with_cache(0).inv(y), x)


def test_default_permutation_is_reproducible_from_its_seed():
    assert torch.equal(Permutation(8, seed=3).perm, Permutation(8, seed=3).perm)
    assert not torch.equal(Permutation(8, seed=3).perm, Permutation(8, seed=4).perm)
    assert sorted(Permutation(8).perm.tolist()) == list(range(8))


@pytest.mark.parametrize("perm", [[0, 0, 1], [0, 1], [0, 1, 3], [-1, 0, 1], [0, 1, 2, 3]])
def test_invalid_permutation_is_rejected(perm):
    with pytest.raises(ValueError, match="permutation"):
        Permutation(3, permutation=torch.tensor(perm))
