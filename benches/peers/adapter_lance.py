"""LanceDB, embedded (PyPI `lancedb`): one table (id, lon, lat, vector), BTREE scalar indexes
on lon and lat, an IVF_HNSW_SQ vector index (cosine, m 16, ef_construction 128, partitions
√N/4 clamped to [1, 256]); queries with a SQL `where` and prefilter=True, ef PEERS_LANCE_EF
(default 128), nprobes PEERS_LANCE_NPROBES (default 20). Run twice: the index path
("lancedb") and `bypass_vector_index()` ("lancedb-exact"). Filters are SQL over lon/lat:
a range for the bbox, a haversine expression behind its box for the circle, and one
half-plane per edge for the (convex) polygon.

PEERS_PATCH=1: the patch-level set (see `patch_main`): one row per patch (id, tile, row, col,
w, s, e, n, vector) with the patch's own box, BTREE on w, s, e, n, the same vector index and
both runs; the filter is `w <= E AND e >= W AND s <= N AND n >= S`."""
import json
import math
import os
import shutil
import sys

import lancedb
import numpy as np
import pyarrow as pa

import common
from adapter_pg import circle_box
from gen import EARTH_RADIUS_KM, halfplanes

EF = int(os.environ.get("PEERS_LANCE_EF", "128"))
NPROBES = int(os.environ.get("PEERS_LANCE_NPROBES", "20"))


def where(q):
    k = q["kind"]
    if k == "bbox":
        w, s, e, n = q["bbox"]
        return f"lon >= {w!r} AND lon <= {e!r} AND lat >= {s!r} AND lat <= {n!r}"
    if k == "radius":
        lon0, lat0, km, R = q["lon"], q["lat"], q["km"], EARTH_RADIUS_KM
        hav = (f"2.0 * {R!r} * asin(sqrt(least(1.0, power(sin(radians(lat - ({lat0!r})) / 2.0), 2) + "
               f"cos(radians({lat0!r})) * cos(radians(lat)) * power(sin(radians(lon - ({lon0!r})) / 2.0), 2)))) <= {km!r}")
        b = circle_box(lon0, lat0, km)
        return f"lon >= {b[0]!r} AND lon <= {b[2]!r} AND lat >= {b[1]!r} AND lat <= {b[3]!r} AND {hav}" if b else hav
    if k == "polygon":
        xs, ys = [p[0] for p in q["ring"]], [p[1] for p in q["ring"]]
        box = f"lon >= {min(xs)!r} AND lon <= {max(xs)!r} AND lat >= {min(ys)!r} AND lat <= {max(ys)!r}"
        return " AND ".join([box] + [f"({a!r}) * lon + ({b!r}) * lat <= {c!r}" for a, b, c in halfplanes(q["ring"])])
    return None


def search_both(tbl, qvecs, qs, wheres, k, docs, mode, ingest_s, build_s, disk):
    """Both runs over one table: the vector index (nprobes, ef) and bypass_vector_index."""
    for exact in (False, True):
        def run(i, q):
            b = tbl.search(qvecs[i]).distance_type("cosine").limit(k).select(["id", "_distance"])
            if wheres[i]:
                b = b.where(wheres[i], prefilter=True)
            b = b.bypass_vector_index() if exact else b.nprobes(NPROBES).ef(EF)
            return b.to_arrow()["id"].to_pylist(), None

        results = common.run_queries(qs, run)
        print(f"lance: queries done (exact={exact})", file=sys.stderr)
        docs.append({"engine": "lancedb-exact" if exact else "lancedb",
                     "mode": f"lancedb {lancedb.__version__}, embedded; " + ("bypass_vector_index (exact, prefilter)" if exact else mode),
                     "ingest_s": ingest_s, "build_s": 0.0 if exact else build_s, "disk_bytes": disk, "peak_rss_kb": common.self_peak_rss_kb(), "results": results})


def patch_main(data, work, out):
    from gen import GRID, patch_boxes
    tiles, pv = np.load(f"{data}/tiles.npy"), np.load(f"{data}/patches.npy", mmap_mode="r")
    qvecs, meta = np.load(f"{data}/qvecs.npy"), json.load(open(f"{data}/queries.json"))
    p, dim, k, n = GRID * GRID, pv.shape[1], meta["k"], len(pv)
    boxes = patch_boxes(tiles).reshape(-1, 4)
    path = os.path.join(work, "lance-patch")
    shutil.rmtree(path, ignore_errors=True)
    db = lancedb.connect(path)
    with common.Timer() as ingest:
        tbl = None
        for s in range(0, n, 100_000):
            e = min(n, s + 100_000)
            ids = np.arange(s, e, dtype=np.int64)
            batch = pa.table({
                "id": pa.array(ids),
                "tile": pa.array((ids // p).astype(np.int32)),
                "row": pa.array((ids % p // GRID).astype(np.int16)),
                "col": pa.array((ids % GRID).astype(np.int16)),
                "w": pa.array(boxes[s:e, 0]), "s": pa.array(boxes[s:e, 1]), "e": pa.array(boxes[s:e, 2]), "n": pa.array(boxes[s:e, 3]),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(pv[s:e]).reshape(-1)), dim),
            })
            if tbl is None:
                tbl = db.create_table("patches", batch)
            else:
                tbl.add(batch)
    print(f"lance: patch ingest {ingest.s:.1f} s", file=sys.stderr)
    parts = max(1, min(256, int(math.sqrt(n) / 4)))
    with common.Timer() as build:
        for col in ("w", "s", "e", "n"):
            tbl.create_scalar_index(col, index_type="BTREE")
        tbl.create_index(metric="cosine", index_type="IVF_HNSW_SQ", num_partitions=parts, m=16, ef_construction=128)
    print(f"lance: index build {build.s:.1f} s ({parts} partitions)", file=sys.stderr)
    disk = common.dir_bytes(path)
    qs = meta["queries"]
    wheres = []
    for q in qs:
        if q["kind"] == "bbox":
            W, S, E, N = q["bbox"]
            wheres.append(f"w <= {E!r} AND e >= {W!r} AND s <= {N!r} AND n >= {S!r}")
        else:
            wheres.append(None)
    docs = []
    search_both(tbl, qvecs, qs, wheres, k, docs, f"a row per patch; IVF_HNSW_SQ {parts} partitions, m 16, ef_construction 128, nprobes {NPROBES}, ef {EF}, prefilter; BTREE on w, s, e, n",
                ingest.s, build.s, disk)
    common.write(out, docs[0])
    common.write(out.replace(".json", "-exact.json"), docs[1])


def main():
    data, work, out = sys.argv[1:4]
    if os.environ.get("PEERS_PATCH", "0") != "0":
        return patch_main(data, work, out)
    vecs, lon, lat, qvecs, meta = common.load(data)
    n, dim, k = len(lon), vecs.shape[1], meta["k"]
    path = os.path.join(work, "lance")
    shutil.rmtree(path, ignore_errors=True)
    db = lancedb.connect(path)
    with common.Timer() as ingest:
        tbl = None
        for s in range(0, n, 100_000):
            e = min(n, s + 100_000)
            batch = pa.table({
                "id": pa.array(np.arange(s, e, dtype=np.int64)),
                "lon": pa.array(lon[s:e]),
                "lat": pa.array(lat[s:e]),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vecs[s:e]).reshape(-1)), dim),
            })
            if tbl is None:
                tbl = db.create_table("photos", batch)
            else:
                tbl.add(batch)
    print(f"lance: ingest {ingest.s:.1f} s", file=sys.stderr)
    parts = max(1, min(256, int(math.sqrt(n) / 4)))
    with common.Timer() as build:
        tbl.create_scalar_index("lon", index_type="BTREE")
        tbl.create_scalar_index("lat", index_type="BTREE")
        tbl.create_index(metric="cosine", index_type="IVF_HNSW_SQ", num_partitions=parts, m=16, ef_construction=128)
    print(f"lance: index build {build.s:.1f} s ({parts} partitions)", file=sys.stderr)
    disk = common.dir_bytes(path)
    qs = meta["queries"]
    wheres = [where(q) for q in qs]
    docs = []
    for exact in (False, True):
        def run(i, q):
            b = tbl.search(qvecs[i]).distance_type("cosine").limit(k).select(["id", "_distance"])
            if wheres[i]:
                b = b.where(wheres[i], prefilter=True)
            b = b.bypass_vector_index() if exact else b.nprobes(NPROBES).ef(EF)
            return b.to_arrow()["id"].to_pylist(), None

        results = common.run_queries(qs, run)
        print(f"lance: queries done (exact={exact})", file=sys.stderr)
        docs.append({"engine": "lancedb-exact" if exact else "lancedb",
                     "mode": f"lancedb {lancedb.__version__}, embedded; " + ("bypass_vector_index (exact, prefilter)" if exact else
                             f"IVF_HNSW_SQ {parts} partitions, m 16, ef_construction 128, nprobes {NPROBES}, ef {EF}, prefilter; BTREE on lon, lat"),
                     "ingest_s": ingest.s, "build_s": 0.0 if exact else build.s, "disk_bytes": disk, "peak_rss_kb": common.self_peak_rss_kb(), "results": results})
    common.write(out, docs[0])
    common.write(out.replace(".json", "-exact.json"), docs[1])


if __name__ == "__main__":
    main()
