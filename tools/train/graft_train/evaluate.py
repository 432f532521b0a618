"""Held-out retrieval: satellite tile -> ground photos, on the test split.

Image level (``image_r@k``)
    Queries are the test tiles' ``embedding`` vectors; the gallery is every photo
    embedding of every test tile (cosine similarity, all vectors L2-normalised). For a tile
    with photos G_i, the query is a hit at k when at least one photo of G_i is among the k
    most similar gallery photos. recall@k is the fraction of test tiles that hit (tiles
    with no photos are not in the split at all).

Pixel level (``pixel_r@k``)
    One query per test photo: the projected patch token of its tile at the photo's pixel.
    The gallery is the same; a query hits at k when that very photo is among the top k.

Chance (``image_chance@k``, ``pixel_chance@k``)
    The expected recall of a random ranking: for a tile with n photos in a gallery of M,
    1 - C(M-n, k) / C(M, k) (image level), and k / M (pixel level), averaged over queries.
"""

from __future__ import annotations

import math

import torch

from .data import GraftPairs, collate
from .losses import patch_index

KS = (1, 5, 10)


def _chance(n: int, m: int, k: int) -> float:
    if k >= m:
        return 1.0
    return 1.0 - math.comb(m - n, k) / math.comb(m, k) if m - n >= k else 1.0


@torch.no_grad()
def embed_split(model, ds: GraftPairs, device: torch.device, batch: int = 32,
                amp_dtype: torch.dtype | None = None, want_pixel: bool = True) -> dict:
    model.eval()
    tiles, photos, tile_idx, pix = [], [], [], []
    base = 0
    for s0 in range(0, len(ds), batch):
        b = collate([ds[i] for i in range(s0, min(s0 + batch, len(ds)))])
        x = b["pixels"].to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            emb, patches = model(x)
        emb = torch.nn.functional.normalize(emb.float(), dim=-1).cpu()
        tiles.append(emb)
        photos.append(torch.nn.functional.normalize(b["photos"], dim=-1))
        tile_idx.append(b["tile_idx"] + base)
        if want_pixel:
            pidx = patch_index(b["offsets"], grid=model.grid).to(device)
            q = patches[b["tile_idx"].to(device), pidx].float()
            pix.append(torch.nn.functional.normalize(q, dim=-1).cpu())
        base += x.shape[0]
    out = {"tiles": torch.cat(tiles), "photos": torch.cat(photos), "tile_idx": torch.cat(tile_idx)}
    if want_pixel:
        out["pixel_queries"] = torch.cat(pix)
    return out


def recall(emb: dict, ks=KS) -> dict:
    """Recall@k as defined in the module docstring, from :func:`embed_split` output."""
    tiles, photos, tile_idx = emb["tiles"], emb["photos"], emb["tile_idx"]
    n_tiles, m = tiles.shape[0], photos.shape[0]
    kmax = min(max(ks), m)
    res: dict = {"n_tiles": n_tiles, "n_photos": m}
    top = (tiles @ photos.t()).topk(kmax, dim=1).indices          # [T, kmax]
    own = tile_idx[top] == torch.arange(n_tiles).unsqueeze(1)     # [T, kmax]
    counts = torch.bincount(tile_idx, minlength=n_tiles).tolist()
    for k in ks:
        res[f"image_r@{k}"] = own[:, :k].any(dim=1).float().mean().item()
        res[f"image_chance@{k}"] = sum(_chance(c, m, k) for c in counts) / n_tiles
    if "pixel_queries" in emb:
        q = emb["pixel_queries"]
        topq = (q @ photos.t()).topk(kmax, dim=1).indices
        hit = topq == torch.arange(m).unsqueeze(1)
        for k in ks:
            res[f"pixel_r@{k}"] = hit[:, :k].any(dim=1).float().mean().item()
            res[f"pixel_chance@{k}"] = min(k, m) / m
    return res


def evaluate(model, ds: GraftPairs, device: torch.device, batch: int = 32,
             amp_dtype: torch.dtype | None = None, ks=KS) -> dict:
    was_training = model.training
    try:
        return recall(embed_split(model, ds, device, batch, amp_dtype), ks)
    finally:
        model.train(was_training)
