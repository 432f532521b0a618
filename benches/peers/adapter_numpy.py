"""numpy brute force with a filter mask: the GRAFT-demo baseline (and how gen.py computes the
exact reference). Everything in RAM; the mask is evaluated per query over all N points."""
import os
import sys

import numpy as np

import common
from gen import haversine_km, in_convex


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


def main():
    data, work, out = sys.argv[1:4]
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
