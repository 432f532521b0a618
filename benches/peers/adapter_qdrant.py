"""Qdrant Edge, in-process, through the prebuilt `qdrant-edge-py` wheel (not the nightly-only
`qdrant-edge` crate). One shard; HNSW m = 16, ef_construct = 128; a Geo payload index on
`loc`; queries with geo_bounding_box / geo_radius / geo_polygon filters, hnsw_ef = 128,
one search thread. Qdrant's query planner picks payload-index scan vs filtered HNSW.

PEERS_PATCH=1: the patch-level set (see `patch_main`): a point per patch with payload tile,
row, col and the patch's own box w, s, e, n (Float payload indexes on the four), filtered by
four range conditions: w <= E, e >= W, s <= N, n >= S.

PEERS_QDRANT_REUSE=PRIOR.json: open the shard a previous run left at WORK/qdrant (EdgeShard.load)
instead of building one, and take ingest_s, build_s and disk_bytes from PRIOR.json: re-query at
other beams without the hour-long rebuild. PEERS_QDRANT_EXACT=1 adds a run with
SearchParams(exact=True) (Qdrant's own full scan of the filtered points), engine
"qdrant-edge-exact", written as OUT with -exact before .json."""
import json
import os
import shutil
import sys

import numpy as np
import qdrant_edge as qe

import common

EF = int(os.environ.get("PEERS_QDRANT_EF", "128"))


def qfilter(q):
    k = q["kind"]
    if k == "bbox":
        w, s, e, n = q["bbox"]
        c = qe.FieldCondition(key="loc", geo_bounding_box=qe.GeoBoundingBox(qe.GeoPoint(lon=w, lat=n), qe.GeoPoint(lon=e, lat=s)))
    elif k == "radius":
        c = qe.FieldCondition(key="loc", geo_radius=qe.GeoRadius(qe.GeoPoint(lon=q["lon"], lat=q["lat"]), q["km"] * 1000.0))
    elif k == "polygon":
        c = qe.FieldCondition(key="loc", geo_polygon=qe.GeoPolygon([qe.GeoPoint(lon=x, lat=y) for x, y in q["ring"]]))
    else:
        return None
    return qe.Filter(must=[c])


# PEERS_QDRANT_M (diagnosis): HNSW m; 0 builds no graph (Qdrant then answers every query by
# scanning the filtered points, as its exact mode does), which skips the hour-long 1M build
# when only the exact runs at low selectivity are wanted.
M = int(os.environ.get("PEERS_QDRANT_M", "16"))


def new_shard(path, dim):
    """An empty shard at `path` (anything there is removed): cosine, HNSW m 16 (M), ef_construct
    128, full-scan threshold 10k, one search thread — the settings of every run."""
    shutil.rmtree(path, ignore_errors=True)
    cfg = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        hnsw_config=qe.HnswIndexConfig(m=M, ef_construct=128, full_scan_threshold=10_000),
        max_search_threads=1,
    )
    return qe.EdgeShard.create(path, cfg)


def optimize(shard):
    """Build the shard's index (HNSW unless m = 0) and flush; the seconds it took."""
    with common.Timer() as build:
        shard.optimize()
        shard.flush()
    print(f"qdrant: optimize (HNSW build) {build.s:.1f} s; {shard.info()}", file=sys.stderr)
    return build.s


def timed_runs(shard, qvecs, meta, qfilter, out, what, extra_mode, ingest_s, build_s, disk):
    """Time every query at hnsw_ef EF (written to `out`), at each of PEERS_QDRANT_EFS (comma
    list, written as qdrant-ef<X>.json) and, with PEERS_QDRANT_EXACT=1, with Qdrant's exact
    search (qdrant-exact.json); then close the shard. `what` and `extra_mode` go around the
    index settings in each run's mode line."""
    k = meta["k"]
    extra = [int(x) for x in os.environ.get("PEERS_QDRANT_EFS", "").split(",") if x.strip()]
    # Runs as (tag, params): tag None is the default run, else the engine and file suffix.
    runs = [(None, qe.SearchParams(hnsw_ef=EF))] + [(f"ef{ef}", qe.SearchParams(hnsw_ef=ef)) for ef in extra]
    if os.environ.get("PEERS_QDRANT_EXACT", "0") != "0":
        runs.append(("exact", qe.SearchParams(exact=True)))
    docs = []
    for tag, params in runs:
        # Requests are built before timing (graftdb's adapter also builds its Query first):
        # the timed part is the shard.query call and reading the ids.
        reqs = [qe.QueryRequest(limit=k, query=qe.Query.Nearest(qvecs[i].tolist()), filter=qfilter(q), params=params)
                for i, q in enumerate(meta["queries"])]

        def run(i, q):
            return [p.id for p in shard.query(reqs[i])], None

        results = common.run_queries(meta["queries"], run)
        search = "exact=True (full scan of the filtered points)" if params.exact else f"hnsw_ef {params.hnsw_ef}"
        docs.append((tag, {"engine": f"qdrant-edge-{tag}" if tag else "qdrant-edge",
                           "mode": f"qdrant-edge-py 0.9.0 wheel, in-process; {what}HNSW m {M}, ef_construct 128, {search}, full_scan_threshold 10k{extra_mode}",
                           "ingest_s": ingest_s, "build_s": build_s, "disk_bytes": disk, "peak_rss_kb": common.self_peak_rss_kb(), "results": results}))
    shard.close()
    for tag, doc in docs:
        common.write(out if tag is None else out.replace(".json", f"-{tag}.json"), doc)


def patch_main(data, work, out):
    from gen import GRID, patch_boxes
    tiles, pv = np.load(f"{data}/tiles.npy"), np.load(f"{data}/patches.npy", mmap_mode="r")
    qvecs, meta = np.load(f"{data}/qvecs.npy"), json.load(open(f"{data}/queries.json"))
    p, dim, n = GRID * GRID, pv.shape[1], len(pv)
    boxes = patch_boxes(tiles).reshape(-1, 4)
    path = os.path.join(work, "qdrant-patch")
    shard = new_shard(path, dim)
    with common.Timer() as ingest:
        for f in ("w", "s", "e", "n"):
            shard.update(qe.UpdateOperation.create_field_index(f, qe.PayloadSchemaType.Float))
        for s in range(0, n, 2_000):
            e = min(n, s + 2_000)
            vl, bl = np.asarray(pv[s:e]).tolist(), boxes[s:e].tolist()
            pts = [qe.Point(i, v, {"tile": i // p, "row": i % p // GRID, "col": i % GRID, "w": b[0], "s": b[1], "e": b[2], "n": b[3]})
                   for i, v, b in zip(range(s, e), vl, bl)]
            shard.update(qe.UpdateOperation.upsert_points(pts))
        shard.flush()
    print(f"qdrant: patch ingest {ingest.s:.1f} s", file=sys.stderr)
    build_s = optimize(shard)
    disk = common.dir_bytes(path)

    def pfilter(q):
        if q["kind"] != "bbox":
            return None
        W, S, E, N = q["bbox"]
        return qe.Filter(must=[qe.FieldCondition(key="w", range=qe.RangeFloat(lte=E)), qe.FieldCondition(key="e", range=qe.RangeFloat(gte=W)),
                               qe.FieldCondition(key="s", range=qe.RangeFloat(lte=N)), qe.FieldCondition(key="n", range=qe.RangeFloat(gte=S))])

    timed_runs(shard, qvecs, meta, pfilter, out, "a point per patch; ", "; Float indexes on w, s, e, n, four range conditions", ingest.s, build_s, disk)


def main():
    data, work, out = sys.argv[1:4]
    if os.environ.get("PEERS_PATCH", "0") != "0":
        return patch_main(data, work, out)
    vecs, lon, lat, qvecs, meta = common.load(data)
    n, dim = len(lon), vecs.shape[1]
    path = os.path.join(work, "qdrant")
    prior = os.environ.get("PEERS_QDRANT_REUSE")
    if prior:
        # Reuse the built shard (its config is on disk); ingest, build and disk are the prior run's.
        p = json.load(open(prior))
        ingest_s, build_s, disk = p["ingest_s"], p["build_s"], p["disk_bytes"]
        shard = qe.EdgeShard.load(path)
        print(f"qdrant: reusing {path} (times from {prior}); {shard.info()}", file=sys.stderr)
    else:
        shard = new_shard(path, dim)
        with common.Timer() as ingest:
            shard.update(qe.UpdateOperation.create_field_index("loc", qe.PayloadSchemaType.Geo))
            for s in range(0, n, 2_000):
                pts = [qe.Point(i, vecs[i].tolist(), {"loc": {"lon": float(lon[i]), "lat": float(lat[i])}}) for i in range(s, min(n, s + 2_000))]
                shard.update(qe.UpdateOperation.upsert_points(pts))
            shard.flush()
        print(f"qdrant: ingest {ingest.s:.1f} s", file=sys.stderr)
        build_s = optimize(shard)
        ingest_s, disk = ingest.s, common.dir_bytes(path)
    timed_runs(shard, qvecs, meta, qfilter, out, "", "" + ("; reused shard" if prior else ""), ingest_s, build_s, disk)

if __name__ == "__main__":
    main()
