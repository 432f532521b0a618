"""The tar-shard reader against the synthetic writer, and its errors."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from graft_train.data import DataError, GraftPairs, collate
from graft_train.synth import write_dataset


def _sample(key, n, dim=4, split="train"):
    img = np.full((224, 224, 3), 100, dtype=np.uint8)
    return {"key": key, "image": img,
            "meta": {"tile_id": key, "split": split,
                     "photos": [{"id": f"{key}-{j}", "offset": [16 * j, 8 * j], "date": "2020-01-01",
                                 "license": "cc-by"} for j in range(n)]},
            "emb": np.arange(n * dim, dtype=np.float32).reshape(n, dim)}


def test_round_trip_with_uneven_photo_counts_and_empty_tiles(tmp_path):
    root = write_dataset(tmp_path, {"train": [_sample("a", 1), _sample("b", 3), _sample("c", 0)],
                                    "test": [_sample("d", 2, split="test")]}, dim=4, shard_size=2)
    ds = GraftPairs(root, "train")
    assert [s.key for s in ds.samples] == ["a", "b"]  # c has no photos and is skipped
    assert len(GraftPairs(root, "test")) == 1
    b = collate([ds[0], ds[1]])
    assert b["pixels"].shape == (2, 3, 224, 224)
    assert b["photos"].shape == (4, 4)
    assert b["tile_idx"].tolist() == [0, 1, 1, 1]
    assert b["offsets"].tolist() == [[0, 0], [0, 0], [16, 8], [32, 16]]
    assert torch.equal(b["photos"][1:], torch.arange(12, dtype=torch.float32).reshape(3, 4))
    # CLIP normalisation of a flat grey 100/255 image
    assert b["pixels"][0, 0, 0, 0].item() == pytest.approx((100 / 255 - 0.48145466) / 0.26862954, abs=1e-5)


def test_max_photos_caps_photos_per_tile(tmp_path):
    root = write_dataset(tmp_path, {"train": [_sample("a", 5)]}, dim=4)
    assert GraftPairs(root, "train", max_photos=2)[0]["photos"].shape == (2, 4)


def test_wrong_manifest_format_is_refused(tmp_path):
    root = write_dataset(tmp_path, {"train": [_sample("a", 1)]}, dim=4)
    m = json.loads((root / "manifest.json").read_text())
    m["format"] = "graft-pairs/999"
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="graft-pairs/999"):
        GraftPairs(root, "train")


def test_sample_missing_a_member_is_refused_with_its_name(tmp_path):
    root = write_dataset(tmp_path, {"train": [_sample("a", 1)]}, dim=4)
    with tarfile.open(root / "train-00000.tar", "a") as tf:
        info = tarfile.TarInfo("zz.json")
        data = b"{}"
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="zz"):
        GraftPairs(root, "train")


def test_embedding_dim_mismatch_is_refused(tmp_path):
    root = write_dataset(tmp_path, {"train": [_sample("a", 2, dim=3)]}, dim=4)
    with pytest.raises(DataError, match="expected"):
        GraftPairs(root, "train")[0]


def test_parallel_loader_workers_read_the_same_samples(synth_data):
    """Forked workers inherit open shard descriptors; reads must not share a file offset."""
    ds = GraftPairs(synth_data, "train")
    ds[0]  # open descriptors before forking
    want = [ds[i]["photos"] for i in range(48)]
    dl = torch.utils.data.DataLoader(ds, batch_size=None, sampler=range(48), num_workers=2)
    got = [s["photos"] for s in dl]
    assert all(torch.equal(a, b) for a, b in zip(want, got))
