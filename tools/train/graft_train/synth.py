"""A small writer for graft-pairs datasets, and a synthetic dataset for tests.

``write_dataset`` writes the same layout as the Rust pairing tool (manifest.json plus tar
shards of ``<key>.png``, ``<key>.json``, ``<key>.npy``), so the trainer can be tested without
it. ``make_synthetic`` builds tiles whose ground-photo embeddings are a function of what the
tile shows, so a model can learn the mapping:

* each tile has a background colour (one of ``n_bg``) and one quadrant painted with an
  object colour (one of ``n_obj``), plus pixel noise;
* each photo lies at a random pixel; its embedding is
  ``normalise(a * U_bg[bg] + b * U_obj[obj] + noise * eps)`` with (a, b) = (1, 0.5) when the
  photo is on the background and (0.5, 1) when it is inside the object quadrant.

Tile-level retrieval therefore has ``n_bg * n_obj`` distinguishable classes, and the
pixel-level loss has to tell object from background at the photo's patch.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from .data import MANIFEST_FORMAT

BG_PALETTE = [(200, 40, 40), (40, 160, 40), (40, 60, 200), (200, 200, 40), (200, 40, 200),
              (40, 200, 200), (120, 120, 120), (240, 140, 20)]
OBJ_PALETTE = [(255, 255, 255), (0, 0, 0), (130, 70, 20), (150, 200, 255)]


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tf.addfile(info, io.BytesIO(data))


def write_dataset(root: str | Path, splits: dict[str, list[dict]], dim: int,
                  shard_size: int = 64, tile_px: int = 224, extra: dict | None = None) -> Path:
    """Write samples as graft-pairs/1. Each sample: ``key``, ``image`` (HxWx3 uint8),
    ``meta`` (the json dict), ``emb`` (float32 [n, dim])."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shards: dict[str, list[str]] = {}
    for split, samples in splits.items():
        shards[split] = []
        for s0 in range(0, len(samples), shard_size):
            rel = f"{split}-{s0 // shard_size:05d}.tar"
            shards[split].append(rel)
            with tarfile.open(root / rel, "w", format=tarfile.USTAR_FORMAT) as tf:
                for s in samples[s0:s0 + shard_size]:
                    png = io.BytesIO()
                    Image.fromarray(s["image"]).save(png, format="PNG")
                    npy = io.BytesIO()
                    np.save(npy, np.asarray(s["emb"], dtype=np.float32))
                    _add(tf, f"{s['key']}.png", png.getvalue())
                    _add(tf, f"{s['key']}.json", json.dumps(s["meta"]).encode())
                    _add(tf, f"{s['key']}.npy", npy.getvalue())
    manifest = {"format": MANIFEST_FORMAT, "shards": shards, "embedding_dim": dim,
                "tile_px": tile_px, **(extra or {})}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def make_synthetic(root: str | Path, n_train: int = 256, n_test: int = 64, dim: int = 32,
                   seed: int = 0, max_photos: int = 4, noise: float = 0.3,
                   n_bg: int = 8, n_obj: int = 4, tile_px: int = 224) -> Path:
    """Write the synthetic dataset described in the module docstring; returns ``root``."""
    rng = np.random.default_rng(seed)
    u_bg = rng.standard_normal((n_bg, dim)).astype(np.float32)
    u_obj = rng.standard_normal((n_obj, dim)).astype(np.float32)
    u_bg /= np.linalg.norm(u_bg, axis=1, keepdims=True)
    u_obj /= np.linalg.norm(u_obj, axis=1, keepdims=True)
    half = tile_px // 2
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for t in range(n_train + n_test):
        split = "train" if t < n_train else "test"
        bg, obj, quad = rng.integers(n_bg), rng.integers(n_obj), rng.integers(4)
        img = np.empty((tile_px, tile_px, 3), dtype=np.float32)
        img[:] = BG_PALETTE[bg % len(BG_PALETTE)]
        r0, c0 = (quad // 2) * half, (quad % 2) * half
        img[r0:r0 + half, c0:c0 + half] = OBJ_PALETTE[obj % len(OBJ_PALETTE)]
        img += rng.normal(0, 12, img.shape)
        img = np.clip(img, 0, 255).astype(np.uint8)
        n = int(rng.integers(1, max_photos + 1))
        photos, embs = [], []
        for j in range(n):
            row, col = rng.integers(0, tile_px, size=2)
            on_obj = r0 <= row < r0 + half and c0 <= col < c0 + half
            a, b = (0.5, 1.0) if on_obj else (1.0, 0.5)
            e = a * u_bg[bg] + b * u_obj[obj] + noise * rng.standard_normal(dim) / np.sqrt(dim)
            embs.append(e / np.linalg.norm(e))
            photos.append({"id": f"p{t}_{j}", "offset": [int(row), int(col)],
                           "date": "2020-01-01", "license": "synthetic"})
        key = f"tile{t:06d}"
        splits[split].append({
            "key": key, "image": img,
            "meta": {"tile_id": key, "photos": photos, "split": split,
                     "synthetic": {"bg": int(bg), "obj": int(obj), "quad": int(quad)}},
            "emb": np.stack(embs).astype(np.float32),
        })
    return write_dataset(root, splits, dim, tile_px=tile_px, extra={"synthetic": True, "seed": seed})
