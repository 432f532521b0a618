"""Reading graft-pairs datasets: a ``manifest.json`` plus WebDataset-style tar shards.

Each sample (one tile) is three tar members sharing a key (the member name up to its first
dot, WebDataset convention): ``<key>.png`` (tile, RGB), ``<key>.json`` (tile_id, photos with
``offset`` = [row_px, col_px] inside the tile, split) and ``<key>.npy`` (float32
``[n_photos, D]`` frozen CLIP embeddings, row j belongs to ``photos[j]``).

Shards are indexed once (member offsets) and then read by seeking, so the dataset is
map-style: any sample can be read in O(1), which makes shuffling and exact resume simple.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MANIFEST_FORMAT = "graft-pairs/1"
# CLIP (OpenAI) preprocessing constants; the exported ONNX expects pixels normalised with these.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class DataError(Exception):
    """A dataset that cannot be read: names the file and what is wrong."""


def load_manifest(root: str | os.PathLike) -> dict:
    path = Path(root) / "manifest.json"
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no manifest.json in the dataset directory") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if m.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path}: format is {m.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    for key in ("shards", "embedding_dim"):
        if key not in m:
            raise DataError(f"{path}: missing field {key!r}")
    return m


@dataclass
class SampleRef:
    shard: Path
    key: str
    members: dict  # ext -> (offset_data, size)


def index_shard(path: Path) -> list[SampleRef]:
    """List the samples of one tar shard with the byte ranges of their members."""
    groups: dict[str, dict] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tf:
            for info in tf:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                key, ext = base.split(".", 1)
                key = info.name[: len(info.name) - len(base)] + key
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                groups[key][ext] = (info.offset_data, info.size)
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: cannot read tar shard ({e})") from None
    refs = []
    for key in order:
        members = groups[key]
        missing = {"png", "json", "npy"} - members.keys()
        if missing:
            raise DataError(f"{path}: sample {key!r} lacks {sorted(missing)}")
        refs.append(SampleRef(path, key, members))
    return refs


class GraftPairs(torch.utils.data.Dataset):
    """Tiles of one split with their photos' embeddings and patch-grid offsets.

    ``__getitem__`` returns a dict: ``pixels`` float32 [3, S, S] (CLIP-normalised),
    ``photos`` float32 [n, D], ``offsets`` float32 [n, 2] (row_px, col_px, rescaled to S if
    the tile is not S px), ``tile_id`` str. Tiles with no photos are skipped at index time.
    At most ``max_photos`` photos per tile are kept (the first ones, in file order).
    """

    def __init__(self, root: str | os.PathLike, split: str, image_size: int = 224,
                 max_photos: int = 25):
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        self.dim = int(self.manifest["embedding_dim"])
        self.image_size = image_size
        self.max_photos = max_photos
        shards = self.manifest["shards"].get(split, [])
        self.samples: list[SampleRef] = []
        for rel in shards:
            self.samples.extend(index_shard(self.root / rel))
        self._fh: dict[Path, int] = {}
        self.samples = [ref for ref in self.samples if json.loads(self._read(ref, "json")).get("photos")]
        self._mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self._std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self):  # file descriptors do not travel to DataLoader workers
        d = dict(self.__dict__)
        d["_fh"] = {}
        return d

    def _read(self, ref: SampleRef, ext: str) -> bytes:
        # os.pread: no shared file offset, so forked DataLoader workers that inherited our
        # descriptors cannot race each other's seek/read.
        fd = self._fh.get(ref.shard)
        if fd is None:
            fd = self._fh[ref.shard] = os.open(ref.shard, os.O_RDONLY)
        off, size = ref.members[ext]
        data = os.pread(fd, size, off)
        if len(data) != size:
            raise DataError(f"{ref.shard}: member {ref.key}.{ext} is truncated")
        return data

    def __del__(self):
        for fd in getattr(self, "_fh", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def __getitem__(self, i: int) -> dict:
        ref = self.samples[i]
        where = f"{ref.shard}:{ref.key}"
        try:
            meta = json.loads(self._read(ref, "json"))
            emb = np.load(io.BytesIO(self._read(ref, "npy")), allow_pickle=False)
            img = Image.open(io.BytesIO(self._read(ref, "png"))).convert("RGB")
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised with the sample named
            raise DataError(f"{where}: cannot decode sample ({e})") from None
        photos = meta.get("photos", [])
        if emb.ndim != 2 or emb.shape[0] != len(photos) or emb.shape[1] != self.dim:
            raise DataError(f"{where}: embeddings have shape {emb.shape}, expected "
                            f"[{len(photos)}, {self.dim}]")
        w, h = img.size
        if (w, h) != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.BICUBIC)
        scale = np.array([self.image_size / h, self.image_size / w], dtype=np.float32)
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        pixels = (arr - self._mean) / self._std
        n = min(len(photos), self.max_photos)
        offsets = np.array([p["offset"] for p in photos[:n]], dtype=np.float32).reshape(n, 2) * scale
        return {
            "pixels": pixels,
            "photos": torch.from_numpy(np.ascontiguousarray(emb[:n], dtype=np.float32)),
            "offsets": torch.from_numpy(offsets),
            "tile_id": str(meta.get("tile_id", ref.key)),
        }


def collate(samples: list[dict]) -> dict:
    """Stack tiles and flatten photos: ``tile_idx[p]`` says which tile photo p belongs to."""
    tile_idx = torch.cat([torch.full((s["photos"].shape[0],), i, dtype=torch.long)
                          for i, s in enumerate(samples)])
    return {
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "photos": torch.cat([s["photos"] for s in samples]),
        "offsets": torch.cat([s["offsets"] for s in samples]),
        "tile_idx": tile_idx,
        "tile_id": [s["tile_id"] for s in samples],
    }
