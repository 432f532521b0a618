"""Write graftdb's small demo dataset: clustered ground photos and satellite tile footprints
with synthetic embeddings, as the Parquet files `graftdb ingest vectors` reads.

Photos cluster around ten real cities (as geotagged photos do). Each record's vector is one
of eight "content" centroids plus noise, so a query for a centroid finds that content.
Seeded, so every run writes the same files.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CITIES = [
    ("san-francisco", -122.42, 37.77), ("paris", 2.35, 48.86), ("nairobi", 36.82, -1.29),
    ("tokyo", 139.69, 35.69), ("sao-paulo", -46.63, -23.55), ("sydney", 151.21, -33.87),
    ("delhi", 77.21, 28.61), ("foz-do-iguacu", -54.59, -25.52), ("suva", 178.44, -18.14),
    ("anchorage", -149.90, 61.22),
]
CONTENT = ["water", "forest", "farmland", "solar-farm", "urban", "desert", "snow", "harbour"]
DIM = 64


def polygon_wkb(ring):
    """Little-endian WKB for a polygon with one ring."""
    out = struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring))
    for x, y in ring:
        out += struct.pack("<dd", x, y)
    return out


def main(out_dir: Path, n_photos: int = 5000, n_tiles: int = 800):
    rng = np.random.default_rng(7)
    out_dir.mkdir(parents=True, exist_ok=True)
    centroids = rng.normal(size=(len(CONTENT), DIM)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)

    def vectors(labels):
        v = centroids[labels] + 0.35 * rng.normal(size=(len(labels), DIM)).astype(np.float32)
        return v.astype(np.float32)

    def places(n, spread):
        city = rng.integers(0, len(CITIES), n)
        lon = np.array([CITIES[c][1] for c in city]) + rng.normal(scale=spread, size=n)
        lat = np.array([CITIES[c][2] for c in city]) + rng.normal(scale=spread, size=n)
        lon = (lon + 180.0) % 360.0 - 180.0  # Suva sits beside the antimeridian
        return np.clip(lat, -89.9, 89.9), lon

    t0 = np.datetime64("2019-01-01T00:00:00")
    lat, lon = places(n_photos, 0.08)
    labels = rng.integers(0, len(CONTENT), n_photos)
    times = t0 + rng.integers(0, 4 * 365 * 86400, n_photos).astype("timedelta64[s]")
    photos = pa.table({
        "id": pa.array(np.arange(1, n_photos + 1, dtype=np.int64)),
        "lon": pa.array(lon), "lat": pa.array(lat),
        "time": pa.array(times.astype("datetime64[us]"), type=pa.timestamp("us", tz="UTC")),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors(labels).ravel()), DIM),
    })
    pq.write_table(photos, out_dir / "photos.parquet")

    lat, lon = places(n_tiles, 0.1)
    half = 0.01  # about a 224 px Sentinel-2 tile (0.02°)
    labels_t = rng.integers(0, len(CONTENT), n_tiles)
    rings = [[(x - half, y + half), (x + half, y + half), (x + half, y - half), (x - half, y - half), (x - half, y + half)]
             for x, y in zip(lon, lat)]
    times = t0 + rng.integers(0, 4 * 365 * 86400, n_tiles).astype("timedelta64[s]")
    tiles = pa.table({
        "id": pa.array([f"S2-{i:05d}" for i in range(n_tiles)]),
        "lon": pa.array(lon), "lat": pa.array(lat),
        "time": pa.array(times.astype("datetime64[us]"), type=pa.timestamp("us", tz="UTC")),
        "geometry": pa.array([polygon_wkb(r) for r in rings], type=pa.binary()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors(labels_t).ravel()), DIM),
    })
    pq.write_table(tiles, out_dir / "tiles.parquet")
    for i, name in enumerate(CONTENT):
        (out_dir / f"query-{name}.json").write_text(json.dumps([float(x) for x in centroids[i]]))
    np.save(out_dir / "queries.npy", centroids)
    print(f"wrote {n_photos} photos, {n_tiles} tiles and {len(CONTENT)} query vectors to {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out/data"))
