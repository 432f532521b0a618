"""PostgreSQL 16 + pgvector 0.6 from the `pgserver` wheel: a real server on a unix socket in
the work directory (it listens on no IP address), started and stopped by this adapter.

Table photos(id int, pt point, embedding vector(512)); GiST on pt (built-in point type);
HNSW on embedding (vector_cosine_ops, m 16, ef_construction PEERS_PG_EFC, default 64).
Queries: ORDER BY embedding <=> q LIMIT k with `pt <@ box`, `pt <@ polygon`, or a haversine
predicate behind its bounding box (PostGIS is not in the wheel and Debian's does not load
into it). hnsw.ef_search PEERS_PG_EF (default 128), no parallel workers. The plan the
planner picked (GiST, HNSW or seq scan) is read from EXPLAIN for every query (untimed).

PEERS_JOIN_ONLY=1: photos(id, pt) and tiles(id, bx) only (no vectors), GiST on pt, then the
photo→tile join `pt <@ bx` timed (see `join_only`).

PEERS_PATCH=1: the patch-level set (see `patch_main`): one row per patch,
patches(id, tile, r, c, bx box, embedding), bx the patch's own box; GiST on bx, HNSW as
above; queries `bx && box` (overlap, boundary included) ORDER BY embedding <=> q LIMIT k."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pgserver
import psycopg

import common
from gen import EARTH_RADIUS_KM

EF = int(os.environ.get("PEERS_PG_EF", "128"))
EFC = int(os.environ.get("PEERS_PG_EFC", "64"))
# The HNSW build's memory: 4 GB holds the 1M × 512-d graph; the 10k-tile patch set (1.96M
# vectors) needs more, or pgvector goes on building on disk, much slower.
MAINT_MEM = os.environ.get("PEERS_PG_MAINT_MEM", "4GB")
# Patch level: no HNSW index, so every query is the GiST filter (or a sequential scan) and a
# sort by distance: pgvector's exact answer, for comparing at equal recall.
EXACT = os.environ.get("PEERS_PG_EXACT", "0") != "0"
R = EARTH_RADIUS_KM


def circle_box(lon0, lat0, km):
    """The lon/lat box holding a spherical cap, or None when it spans a pole or the antimeridian."""
    d = math.degrees(km / R)
    s, n = lat0 - d, lat0 + d
    if s <= -90 or n >= 90:
        return None
    dl = math.degrees(math.asin(min(1.0, math.sin(km / R) / math.cos(math.radians(lat0)))))
    w, e = lon0 - dl, lon0 + dl
    if w < -180 or e > 180:
        return None
    return w, s, e, n


def where(q):
    k = q["kind"]
    if k == "bbox":
        w, s, e, n = q["bbox"]
        return f"WHERE pt <@ box(point({e!r},{n!r}), point({w!r},{s!r}))"
    if k == "radius":
        lon0, lat0, km = q["lon"], q["lat"], q["km"]
        hav = (f"2*{R!r}*asin(sqrt(least(1.0, sin(radians(pt[1]-({lat0!r}))/2)^2 + "
               f"cos(radians({lat0!r}))*cos(radians(pt[1]))*sin(radians(pt[0]-({lon0!r}))/2)^2))) <= {km!r}")
        b = circle_box(lon0, lat0, km)
        return f"WHERE pt <@ box(point({b[2]!r},{b[3]!r}), point({b[0]!r},{b[1]!r})) AND {hav}" if b else f"WHERE {hav}"
    if k == "polygon":
        ring = ",".join(f"({x!r},{y!r})" for x, y in q["ring"][:-1])
        return f"WHERE pt <@ polygon '({ring})'"
    return ""


def plan_of(text):
    if "photos_embedding_idx" in text or "patches_embedding_idx" in text:
        return "hnsw"
    if "photos_pt_idx" in text or "patches_bx_idx" in text:
        return "gist"
    if "Seq Scan" in text:
        return "seq"
    return "other"


def server_peak_rss_kb(pgdata):
    """Largest VmHWM among the server's processes (postmaster and backends)."""
    try:
        pid = int(open(os.path.join(pgdata, "postmaster.pid")).readline())
    except OSError:
        return 0
    best = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            if int(p) != pid and int(stat[1]) != pid:
                continue
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
        except OSError:
            pass
    return best


def start(work):
    pgdata = os.path.join(os.path.abspath(work), "pg")
    shutil.rmtree(pgdata, ignore_errors=True)
    return pgdata, pgserver.get_server(pgdata, cleanup_mode="stop")


def copy_tiles(c, tiles):
    c.execute("CREATE TABLE tiles (id int PRIMARY KEY, bx box NOT NULL)")
    with c.copy("COPY tiles (id, bx) FROM STDIN") as cp:
        cp.write("".join(f"{i}\t(({t[2]!r},{t[3]!r}),({t[0]!r},{t[1]!r}))\n" for i, t in enumerate(tiles.tolist())))


JOIN_SQL = "SELECT count(*) FROM photos p JOIN tiles t ON p.pt <@ t.bx"


def connect(srv):
    """An autocommit session with the index-build settings both modes use; returns the
    connection, a cursor and the server's version string."""
    conn = psycopg.connect(srv.get_uri(), autocommit=True)
    c = conn.cursor()
    version = c.execute("SELECT version()").fetchone()[0].split(" on ")[0]
    c.execute(f"SET maintenance_work_mem = '{MAINT_MEM}'")
    c.execute("SET max_parallel_maintenance_workers = 1")
    return conn, c, version


def join_only(data, work, out):
    """Photos as (id, point) and tiles as boxes, COPY in; GiST on the photo points (built
    after the load, ANALYZE both); the join counted with `pt <@ bx`, no parallel workers."""
    lon, lat = np.load(f"{data}/lon.npy"), np.load(f"{data}/lat.npy")
    tiles = np.load(f"{data}/tiles.npy")
    n = len(lon)
    pgdata, srv = start(work)
    try:
        conn, c, version = connect(srv)
        c.execute("SET max_parallel_workers_per_gather = 0")
        c.execute("SET jit = off")
        c.execute("CREATE TABLE photos (id int PRIMARY KEY, pt point NOT NULL)")
        with common.Timer() as ingest:
            with c.copy("COPY photos (id, pt) FROM STDIN") as cp:
                lonl, latl = lon.tolist(), lat.tolist()
                for s in range(0, n, 50_000):
                    cp.write("".join(f"{i}\t({lonl[i]!r},{latl[i]!r})\n" for i in range(s, min(n, s + 50_000))))
        print(f"pg: COPY {n} photos {ingest.s:.1f} s", file=sys.stderr)
        with common.Timer() as tingest:
            copy_tiles(c, tiles)
        print(f"pg: COPY {len(tiles)} tiles {tingest.s:.1f} s", file=sys.stderr)
        with common.Timer() as build:
            c.execute("CREATE INDEX photos_pt_idx ON photos USING gist (pt)")
            c.execute("ANALYZE photos")
            c.execute("ANALYZE tiles")
        print(f"pg: GiST build + ANALYZE {build.s:.1f} s", file=sys.stderr)
        disk = sum(c.execute(f"SELECT pg_total_relation_size('{t}')").fetchone()[0] for t in ("photos", "tiles"))
        jplan = "\n".join(r[0] for r in c.execute("EXPLAIN " + JOIN_SQL).fetchall())
        with common.Timer() as j:
            pairs = c.execute(JOIN_SQL).fetchone()[0]
        print(f"pg: join {pairs} pairs in {j.s:.2f} s\n{jplan}", file=sys.stderr)
        with common.Timer() as j2:
            pairs2 = c.execute(JOIN_SQL).fetchone()[0]
        assert pairs2 == pairs
        print(f"pg: join again {j2.s:.2f} s", file=sys.stderr)
        rss = server_peak_rss_kb(pgdata)
        conn.close()
    finally:
        srv.cleanup()
    common.write(out, {"engine": "pg", "mode": f"{version} (pgserver wheel, unix socket); COPY, GiST on point after the load, `pt <@ box` join, no parallel workers",
                       "ingest_s": ingest.s, "tile_ingest_s": tingest.s, "build_s": build.s, "build": "GiST on photos.pt + ANALYZE",
                       "disk_bytes": disk, "peak_rss_kb": rss + common.self_peak_rss_kb(), "server_peak_rss_kb": rss,
                       "join": {"tiles": len(tiles), "photos": n, "pairs": pairs, "join_s": j.s, "join_again_s": j2.s, "plan": jplan}})


def patch_main(data, work, out):
    """Every patch a row carrying its tile, row, column and its own box (`gen.patch_boxes`),
    COPY in, then GiST on the box and HNSW on the vector (built after the load, as above)."""
    from gen import GRID, patch_boxes
    tiles, pv = np.load(f"{data}/tiles.npy"), np.load(f"{data}/patches.npy", mmap_mode="r")
    qvecs, meta = np.load(f"{data}/qvecs.npy"), json.load(open(f"{data}/queries.json"))
    p, dim, k = GRID * GRID, pv.shape[1], meta["k"]
    boxes = patch_boxes(tiles).reshape(-1, 4)
    n = len(pv)
    pgdata, srv = start(work)
    try:
        conn, c, version = connect(srv)
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        pgv = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        c.execute(f"CREATE TABLE patches (id int PRIMARY KEY, tile int NOT NULL, r smallint NOT NULL, c smallint NOT NULL, bx box NOT NULL, embedding vector({dim}) NOT NULL)")
        with common.Timer() as ingest:
            with c.copy("COPY patches (id, tile, r, c, bx, embedding) FROM STDIN") as cp:
                for s in range(0, n, 5_000):
                    e = min(n, s + 5_000)
                    bl, vl = boxes[s:e].tolist(), np.asarray(pv[s:e]).tolist()
                    cp.write("".join(f"{i}\t{i // p}\t{i % p // GRID}\t{i % GRID}\t(({b[2]!r},{b[3]!r}),({b[0]!r},{b[1]!r}))\t{v}\n"
                                     for i, b, v in zip(range(s, e), bl, vl)))
        print(f"pg: COPY {n} patches {ingest.s:.1f} s", file=sys.stderr)
        with common.Timer() as build:
            c.execute("CREATE INDEX patches_bx_idx ON patches USING gist (bx)")
            if not EXACT:
                c.execute(f"CREATE INDEX patches_embedding_idx ON patches USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = {EFC})")
            c.execute("VACUUM ANALYZE patches")
        print(f"pg: GiST + HNSW build {build.s:.1f} s", file=sys.stderr)
        disk = c.execute("SELECT pg_total_relation_size('patches')").fetchone()[0]
        c.execute(f"SET hnsw.ef_search = {EF}")
        c.execute("SET max_parallel_workers_per_gather = 0")
        c.execute("SET jit = off")
        qs = meta["queries"]

        def where(q):
            if q["kind"] != "bbox":
                return ""
            w, s, e, n = q["bbox"]
            return f"WHERE bx && box(point({e!r},{n!r}), point({w!r},{s!r}))"

        sqls = [f"SELECT id FROM patches {where(q)} ORDER BY embedding <=> %s::vector LIMIT {k}" for q in qs]
        lits = [str(v.tolist()) for v in qvecs]
        plans = [plan_of("\n".join(r[0] for r in c.execute("EXPLAIN " + s, (lits[i],)).fetchall())) for i, s in enumerate(sqls)]

        def run(i, q):
            return [r[0] for r in c.execute(sqls[i], (lits[i],)).fetchall()], plans[i]

        results = common.run_queries(qs, run)
        print("pg: patch queries done", file=sys.stderr)
        rss = server_peak_rss_kb(pgdata)
        conn.close()
    finally:
        srv.cleanup()
    how = "no vector index (exact: GiST filter or sequential scan, then a sort by distance)" if EXACT else f"HNSW m 16, ef_construction {EFC}, ef_search {EF}, maintenance_work_mem {MAINT_MEM}"
    common.write(out, {"engine": "pgvector-exact" if EXACT else "pgvector", "mode": f"{version} + pgvector {pgv} (pgserver wheel, unix socket); a row per patch; {how}; GiST on the patch box, `&&`",
                       "ingest_s": ingest.s, "build_s": build.s, "disk_bytes": disk, "peak_rss_kb": rss + common.self_peak_rss_kb(), "results": results})


def main():
    data, work, out = sys.argv[1:4]
    if os.environ.get("PEERS_JOIN_ONLY", "0") != "0":
        return join_only(data, work, out)
    if os.environ.get("PEERS_PATCH", "0") != "0":
        return patch_main(data, work, out)
    vecs, lon, lat, qvecs, meta = common.load(data)
    n, dim, k = len(lon), vecs.shape[1], meta["k"]
    pgdata, srv = start(work)
    try:
        conn, c, version = connect(srv)
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        pgv = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        c.execute(f"CREATE TABLE photos (id int PRIMARY KEY, pt point NOT NULL, embedding vector({dim}) NOT NULL)")
        with common.Timer() as ingest:
            with c.copy("COPY photos (id, pt, embedding) FROM STDIN") as cp:
                lonl, latl = lon.tolist(), lat.tolist()
                for s in range(0, n, 5_000):
                    e = min(n, s + 5_000)
                    rows = [f"{i}\t({lonl[i]!r},{latl[i]!r})\t{vecs[i].tolist()}\n" for i in range(s, e)]
                    cp.write("".join(rows))
        print(f"pg: COPY {ingest.s:.1f} s", file=sys.stderr)
        with common.Timer() as build:
            c.execute("CREATE INDEX photos_pt_idx ON photos USING gist (pt)")
            c.execute(f"CREATE INDEX photos_embedding_idx ON photos USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = {EFC})")
            c.execute("VACUUM ANALYZE photos")
        print(f"pg: GiST + HNSW build {build.s:.1f} s", file=sys.stderr)
        disk = c.execute("SELECT pg_total_relation_size('photos')").fetchone()[0]
        c.execute(f"SET hnsw.ef_search = {EF}")
        c.execute("SET max_parallel_workers_per_gather = 0")
        c.execute("SET jit = off")
        qs = meta["queries"]
        sqls = [f"SELECT id FROM photos {where(q)} ORDER BY embedding <=> %s::vector LIMIT {k}" for q in qs]
        lits = [str(v.tolist()) for v in qvecs]
        plans = [plan_of("\n".join(r[0] for r in c.execute("EXPLAIN " + s, (lits[i],)).fetchall())) for i, s in enumerate(sqls)]

        def run(i, q):
            return [r[0] for r in c.execute(sqls[i], (lits[i],)).fetchall()], plans[i]

        results = common.run_queries(qs, run)
        print("pg: queries done", file=sys.stderr)

        join = None
        tiles_path = os.path.join(data, "tiles.npy")
        if os.path.exists(tiles_path) and os.environ.get("PEERS_JOIN", "1") != "0":
            tiles = np.load(tiles_path)
            copy_tiles(c, tiles)
            c.execute("ANALYZE tiles")
            with common.Timer() as j:
                pairs = c.execute(JOIN_SQL).fetchone()[0]
            jplan = "\n".join(r[0] for r in c.execute("EXPLAIN " + JOIN_SQL).fetchall())
            print(f"pg: join {pairs} pairs in {j.s:.2f} s\n{jplan}", file=sys.stderr)
            join = {"tiles": len(tiles), "photos": n, "pairs": pairs, "join_s": j.s, "plan": jplan}
        rss = server_peak_rss_kb(pgdata)
        conn.close()
    finally:
        srv.cleanup()
    common.write(out, {"engine": "pgvector", "mode": f"{version} + pgvector {pgv} (pgserver wheel, unix socket); HNSW m 16, ef_construction {EFC}, ef_search {EF}, maintenance_work_mem {MAINT_MEM}; GiST on point",
                       "ingest_s": ingest.s, "build_s": build.s, "disk_bytes": disk, "peak_rss_kb": rss + common.self_peak_rss_kb(), "results": results, "join": join})


if __name__ == "__main__":
    main()
