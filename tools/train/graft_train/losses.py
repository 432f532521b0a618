"""GRAFT contrastive losses (Mall et al., ICLR 2024), as written in FIELD_NOTES.md.

A batch holds N_B tiles s_i and, flattened, P ground photos g_p with ``tile_idx[p] = i``
(tile i owns N_i >= 1 photos; tiles may own different numbers of photos). All embeddings
are L2-normalised here, and tau is a fixed constant (0.07), not a learned parameter.

Image level::

    L = 1/N_B  sum_i sum_j  -log[ exp(s_i . g_ij / tau) / sum_a sum_b exp(s_i . g_ab / tau) ]

Every photo of tile i is a positive for s_i; every photo of every other tile in the batch is
a negative. The denominator runs over all P photos of the batch (positives included), so
each (i, j) term is a cross-entropy over the P photos with target j.

Pixel level: the same form, with s_i replaced by the projected patch token q_ij of tile i at
the pixel where photo g_ij was taken::

    L = 1/N_B  sum_i sum_j  -log[ exp(q_ij . g_ij / tau) / sum_a sum_b exp(q_ij . g_ab / tau) ]

Both are normalised by the number of tiles N_B, not by the number of photos P.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TAU = 0.07
PATCH_PX = 16


def patch_index(offsets: torch.Tensor, grid: int = 14, patch_px: int = PATCH_PX) -> torch.Tensor:
    """Map pixel offsets ``[P, 2]`` (row_px, col_px) to flat patch indices ``[P]``.

    Patch row = floor(row_px / patch_px), clamped to ``[0, grid-1]`` (same for columns),
    and the flat index is ``row * grid + col`` (row-major, the order of ViT patch tokens
    after the CLS token). A pixel on a border (e.g. row 16) belongs to the patch that
    starts there (row 1). Offsets outside the tile clamp to the nearest edge patch.
    """
    off = torch.as_tensor(offsets, dtype=torch.float64).reshape(-1, 2)
    rc = torch.floor(off / patch_px).to(torch.long).clamp_(0, grid - 1)
    return rc[:, 0] * grid + rc[:, 1]


def image_loss(tile_emb: torch.Tensor, photo_emb: torch.Tensor, tile_idx: torch.Tensor,
               tau: float = TAU) -> torch.Tensor:
    """Image-level multi-positive InfoNCE.

    tile_emb ``[B, D]``, photo_emb ``[P, D]``, tile_idx ``[P]`` (long, values in [0, B)).
    Computed in float32 whatever the input dtype (safe under autocast).
    """
    s = F.normalize(tile_emb.float(), dim=-1)
    g = F.normalize(photo_emb.float(), dim=-1)
    logits = s @ g.t() / tau                                   # [B, P]
    log_denom = torch.logsumexp(logits, dim=1)                 # [B]
    p = torch.arange(g.shape[0], device=g.device)
    pos = logits[tile_idx, p]                                  # s_{tile(p)} . g_p / tau
    return (log_denom[tile_idx] - pos).sum() / s.shape[0]


def pixel_loss(patch_emb: torch.Tensor, photo_emb: torch.Tensor, tile_idx: torch.Tensor,
               patch_idx: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Pixel-level multi-positive InfoNCE.

    patch_emb ``[B, G*G, D]`` (projected patch tokens, CLS excluded), photo_emb ``[P, D]``,
    tile_idx ``[P]``, patch_idx ``[P]`` (from :func:`patch_index`). The query for photo p is
    ``patch_emb[tile_idx[p], patch_idx[p]]``; its positive is g_p and its denominator runs
    over all P photos of the batch.
    """
    q = F.normalize(patch_emb[tile_idx, patch_idx].float(), dim=-1)   # [P, D]
    g = F.normalize(photo_emb.float(), dim=-1)
    logits = q @ g.t() / tau                                           # [P, P]
    loss_p = torch.logsumexp(logits, dim=1) - logits.diagonal()
    return loss_p.sum() / patch_emb.shape[0]
