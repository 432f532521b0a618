"""numpy brute force with a filter mask: the GRAFT-demo baseline (and how gen.py computes the
exact reference). Everything in RAM; the mask is evaluated per query over all N points.

PEERS_PATCH=1 (the patch-level set): the tile boxes are masked per query, the patches of the
matching tiles gathered and multiplied with the query, patches whose own box misses the
query box (on edge tiles) dropped, then argpartition."""
import json
import os
import sys

import numpy as np

import common
from gen import GRID, box_mask, haversine_km, in_convex, patch_boxes


def mask(q, lon, lat):
    k = q["kind"]
    if k == "bbox":
        w, s, e, n = q["bbox"]
        return (lon >= w) & (lon <= e) & (lat >= s) & (lat <= n)
    if k == "radius":
        return haversine_km(q["lon"], q["lat"], lon, lat) <= q["km"]
    if k == "polygon":
        return in_convex(q["ring"], lon, lat)
    return None


def patch_main(data, out):
    with common.Timer() as load:
        tiles = np.load(f"{data}/tiles.npy")
        pv = np.load(f"{data}/patches.npy")
        boxes = patch_boxes(tiles)  # T × 196 × 4
    qvecs, meta = np.load(f"{data}/qvecs.npy"), json.load(open(f"{data}/queries.json"))
    k, p = meta["k"], GRID * GRID
    pt = pv.reshape(len(tiles), p, -1)

    def run(i, q):
        if q["kind"] == "all":
            ids, s = None, pv @ qvecs[i]
        else:
            t = np.flatnonzero(box_mask(tiles, q["bbox"]))
            s = (pt[t] @ qvecs[i]).reshape(-1)
            pm = box_mask(boxes[t], q["bbox"]).reshape(-1)
            ids = (t[:, None] * p + np.arange(p)).reshape(-1)[pm]
            s = s[pm]
        top = np.argpartition(-s, k - 1)[:k] if len(s) > k else np.arange(len(s))
        top = top[np.argsort(-s[top])]
        return (top if ids is None else ids[top]), None

    results = common.run_queries(meta["queries"], run)
    common.write(out, {"engine": "numpy", "mode": f"numpy {np.__version__}, tile-box mask, matmul over those tiles' patches, patch-box mask",
                       "ingest_s": load.s, "build_s": 0.0, "disk_bytes": sum(os.path.getsize(f"{data}/{f}.npy") for f in ("patches", "tiles")),
                       "peak_rss_kb": common.self_peak_rss_kb(), "results": results})


def main():
    data, work, out = sys.argv[1:4]
    if os.environ.get("PEERS_PATCH", "0") != "0":
        return patch_main(data, out)
    with common.Timer() as load:
        vecs, lon, lat, qvecs, meta = common.load(data)
        vecs = np.ascontiguousarray(vecs)
    k = meta["k"]

    def run(i, q):
        m = mask(q, lon, lat)
        if m is None:
            idx, s = None, vecs @ qvecs[i]
        else:
            idx = np.flatnonzero(m)
            s = vecs[idx] @ qvecs[i]
        top = np.argpartition(-s, k - 1)[:k] if len(s) > k else np.arange(len(s))
        top = top[np.argsort(-s[top])]
        return (top if idx is None else idx[top]), None

    results = common.run_queries(meta["queries"], run)
    common.write(out, {"engine": "numpy", "mode": f"numpy {np.__version__}, bbox/circle/polygon mask then matmul", "ingest_s": load.s, "build_s": 0.0,
                       "disk_bytes": sum(os.path.getsize(f"{data}/{f}.npy") for f in ("vecs", "lon", "lat")), "peak_rss_kb": common.self_peak_rss_kb(), "results": results})


if __name__ == "__main__":
    main()
