"""The GRAFT losses against a direct numpy transcription of the formulas in FIELD_NOTES.md."""

import numpy as np
import pytest
import torch

from graft_train.losses import TAU, image_loss, patch_index, pixel_loss


def _norm(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ref_image_loss(s, photos_per_tile, tau=TAU):
    """L = 1/N_B sum_i sum_j -log[exp(s_i.g_ij/tau) / sum_a sum_b exp(s_i.g_ab/tau)], by loops."""
    s = _norm(s.astype(np.float64))
    g = [_norm(p.astype(np.float64)) for p in photos_per_tile]
    total = 0.0
    for i in range(len(s)):
        denom = sum(np.exp(s[i] @ g[a][b] / tau) for a in range(len(g)) for b in range(len(g[a])))
        for j in range(len(g[i])):
            total += -np.log(np.exp(s[i] @ g[i][j] / tau) / denom)
    return total / len(s)


def ref_pixel_loss(patches, photos_per_tile, patch_ids, tau=TAU):
    """Same with s_i replaced by the patch token of tile i at photo g_ij's patch."""
    g = [_norm(p.astype(np.float64)) for p in photos_per_tile]
    total = 0.0
    for i in range(len(g)):
        for j in range(len(g[i])):
            q = _norm(patches[i, patch_ids[i][j]].astype(np.float64))
            denom = sum(np.exp(q @ g[a][b] / tau) for a in range(len(g)) for b in range(len(g[a])))
            total += -np.log(np.exp(q @ g[i][j] / tau) / denom)
    return total / len(g)


def _flatten(photos_per_tile):
    g = torch.from_numpy(np.concatenate(photos_per_tile)).float()
    ti = torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(photos_per_tile)])
    return g, ti


@pytest.mark.parametrize("counts", [[1, 3, 2, 5, 1], [1], [4, 1], [2, 2, 2]])
@pytest.mark.parametrize("seed", [0, 1])
def test_image_loss_matches_direct_formula_with_uneven_photo_counts(counts, seed):
    rng = np.random.default_rng(seed)
    d = 16
    s = rng.standard_normal((len(counts), d)).astype(np.float32)
    photos = [rng.standard_normal((c, d)).astype(np.float32) for c in counts]
    g, ti = _flatten(photos)
    got = image_loss(torch.from_numpy(s) * 3.0, g * 0.5, ti).item()  # scale-invariant: inputs are normalised
    assert got == pytest.approx(ref_image_loss(s, photos), rel=1e-5, abs=1e-5)


def test_single_tile_single_photo_loss_is_zero():
    s = torch.randn(1, 8)
    assert image_loss(s, torch.randn(1, 8), torch.zeros(1, dtype=torch.long)).item() == pytest.approx(0, abs=1e-6)


def test_image_loss_ignores_photo_order():
    rng = np.random.default_rng(3)
    s = torch.from_numpy(rng.standard_normal((4, 8)).astype(np.float32))
    g, ti = _flatten([rng.standard_normal((c, 8)).astype(np.float32) for c in [3, 1, 2, 4]])
    perm = torch.randperm(len(ti), generator=torch.Generator().manual_seed(0))
    assert image_loss(s, g, ti).item() == pytest.approx(image_loss(s, g[perm], ti[perm]).item(), rel=1e-6)


@pytest.mark.parametrize("counts", [[1, 3, 2, 5, 1], [1], [3, 1]])
def test_pixel_loss_matches_direct_formula(counts):
    rng = np.random.default_rng(len(counts))
    d, grid = 12, 14
    patches = rng.standard_normal((len(counts), grid * grid, d)).astype(np.float32)
    photos = [rng.standard_normal((c, d)).astype(np.float32) for c in counts]
    offsets = [rng.uniform(0, 224, size=(c, 2)).astype(np.float32) for c in counts]
    ids = [[int(r // 16) * grid + int(c // 16) for r, c in off] for off in offsets]
    g, ti = _flatten(photos)
    pidx = patch_index(torch.from_numpy(np.concatenate(offsets)))
    got = pixel_loss(torch.from_numpy(patches), g, ti, pidx).item()
    assert got == pytest.approx(ref_pixel_loss(patches, photos, ids), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("offset,expected", [
    ((0, 0), 0), ((15, 15), 0), ((15.999, 15.999), 0),
    ((16, 0), 14), ((0, 16), 1), ((16, 16), 15), ((31, 32), 14 + 2),
    ((112, 112), 7 * 14 + 7), ((111.5, 112), 6 * 14 + 7),
    ((208, 208), 195), ((223, 223), 195), ((224, 224), 195), ((500, -3), 13 * 14),
    ((-1, -1), 0),
])
def test_patch_index_at_borders_and_outside(offset, expected):
    assert patch_index(torch.tensor([offset])).item() == expected


@pytest.mark.parametrize("offset,expected", [((16, 31), 15), ((15, 31), 1), ((0, 208), 13),
                                             ((223, 0), 182), ((32, 47.9), 2 * 14 + 2)])
def test_pixel_loss_gradient_reaches_only_the_photos_patch(offset, expected):
    torch.manual_seed(0)
    patches = torch.randn(2, 196, 8, requires_grad=True)
    g = torch.randn(2, 8)
    ti = torch.tensor([0, 1])
    offs = torch.tensor([offset, (100.0, 100.0)])
    pixel_loss(patches, g, ti, patch_index(offs)).backward()
    touched = (patches.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert touched == [expected]
    assert (patches.grad[1].abs().sum(-1) > 0).nonzero().flatten().tolist() == [6 * 14 + 6]
