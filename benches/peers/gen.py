"""One dataset for every engine of the peer benchmark (see README.md).

Writes into DATA_DIR:
  vecs.npy   N × 512 float32 unit vectors      lon.npy, lat.npy  N float64
  qvecs.npy  Q × 512 float32 query vectors     queries.json      one filter per query
  truth.json exact top-k ids per query and match counts (numpy brute force over the mask)
  tiles.npy  T × 4 float64 tile boxes [w, s, e, n] for the photo→tile join (T = N / 10)

The distribution is the one of benches/engine.rs (`generate`), written once here in numpy
(not bit-identical to the Rust generator): 30 Zipf-weighted gaussian "cities" + 5 % scattered
points; 50 unit content centroids, each record a city-preferred centroid + N(0, 0.03²) noise.
Queries: a centroid + N(0, 0.04²) noise; the filter is grown around a random record until it
holds the target count: a bbox, a great-circle circle, or a convex octagon (random aspect and
rotation, clipped to the world). Each threshold sits halfway between the target-th and the
next record, so no record lies on a boundary and float differences between engines cannot
change the match set.

Usage: python gen.py DATA_DIR   (env PEERS_N, PEERS_Q queries per selectivity, PEERS_SEED)

PEERS_JOIN_ONLY=1 writes only lon.npy, lat.npy and tiles.npy (no vectors, queries or truth):
the photo→tile join needs positions alone, so 1M photos × 100k tiles fit the dev VM. The
positions are the ones the full generator draws for the same N and seed (the draws before
the vectors are the same); the tiles come from a later rng state, so they differ.

PEERS_PATCH=1 writes the patch-level set instead (env PEERS_PATCH_TILES = T, default 10000):
  tiles.npy    T × 4 float64 axis-aligned tile footprints [w, s, e, n], 1–5 km squares centred
               at points clustered like the photos (`positions`)
  patches.npy  T·196 × 512 float32 unit patch vectors, tile-major then row (0 = north), col
               (0 = west); patch id = tile · 196 + row · 14 + col. Per tile a content centroid
               (a city-preferred centroid + N(0, 0.02²)), per patch + N(0, 0.03²), normalised.
  qvecs.npy, queries.json (bbox per query, or none at 100 %), truth.json (exact top-k patch ids,
               k-th score, matching patches and tiles).
A patch matches when its own box (the tile's box cut 14 × 14, graftdb's `patch_footprint`)
intersects the query box, boundary included: graftdb's patch semantics (a tile on the edge
contributes only its patches that touch the region). Selectivities 0.1 %, 1 %, 10 % of tiles
(the box grown around a random tile's centre to that many intersecting tiles, then each edge
moved out until no patch edge lies within 1e-5° of it) and 100 % (no filter).
"""
import json
import os
import sys
import time

import numpy as np

DIM = 512
CITIES = 30
CENTROIDS = 50
K = 10
SELECTIVITIES = [0.0001, 0.001, 0.01, 0.1, 1.0]
KINDS = ["bbox", "radius", "polygon"]
EARTH_RADIUS_KM = 6371.0088  # the one graftdb's Region and geo's haversine use


def haversine_km(lon0, lat0, lon, lat):
    p0, p = np.radians(lat0), np.radians(lat)
    dp, dl = p - p0, np.radians(lon - lon0)
    a = np.sin(dp / 2) ** 2 + np.cos(p0) * np.cos(p) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def halfplanes(ring):
    """(a, b, c) per edge of a counter-clockwise convex ring: inside iff a·lon + b·lat <= c."""
    out = []
    for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:]):
        a, b = (y1 - y0), -(x1 - x0)  # outward normal of a CCW edge
        out.append((a, b, a * x0 + b * y0))
    return out


def in_convex(ring, lon, lat):
    m = np.ones(len(lon), dtype=bool)
    for a, b, c in halfplanes(ring):
        m &= a * lon + b * lat <= c
    return m


def clip_world(ring):
    """Sutherland–Hodgman clip of a CCW convex ring (closed) to [-180, 180] × [-90, 90]."""
    pts = ring[:-1]
    for axis, bound, keep_le in [(0, 180.0, True), (0, -180.0, False), (1, 90.0, True), (1, -90.0, False)]:
        inside = (lambda p: p[axis] <= bound) if keep_le else (lambda p: p[axis] >= bound)
        out = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(cross(prev, cur, axis, bound))
                out.append(cur)
            elif inside(prev):
                out.append(cross(prev, cur, axis, bound))
        pts = out
    return pts + [pts[0]]


def cross(p, q, axis, bound):
    t = (bound - p[axis]) / (q[axis] - p[axis])
    r = [p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])]
    r[axis] = bound
    return r


def positions(n, rng):
    """Points clustered like geotagged photos, each one's city (the 5 % scattered points keep
    the city they were drawn for) and the unit content centroids: the first draws of
    `generate`, shared with the patch set."""
    cities = [(rng.uniform(-160, 160), rng.uniform(-50, 65), rng.uniform(0.02, 0.8), 1.0 / (i + 1)) for i in range(CITIES)]
    w = np.array([c[3] for c in cities])
    centroids = rng.standard_normal((CENTROIDS, DIM)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    city = rng.choice(CITIES, size=n, p=w / w.sum())
    cx = np.array([c[0] for c in cities])[city]
    cy = np.array([c[1] for c in cities])[city]
    sd = np.array([c[2] for c in cities])[city]
    lon = np.clip(cx + sd * rng.standard_normal(n), -179.9, 179.9)
    lat = np.clip(cy + sd * rng.standard_normal(n), -89.9, 89.9)
    scattered = rng.random(n) < 0.05
    lon[scattered] = rng.uniform(-179, 179, scattered.sum())
    lat[scattered] = rng.uniform(-60, 70, scattered.sum())
    return lon, lat, city, centroids


def generate(n, rng, vectors=True):
    lon, lat, city, centroids = positions(n, rng)
    if not vectors:
        return lon, lat, None, centroids
    pref = rng.random(n) < 0.7
    cent = np.where(pref, (city * 7 + rng.integers(0, 5, n)) % CENTROIDS, rng.integers(0, CENTROIDS, n))
    vecs = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 50_000):
        e = min(n, s + 50_000)
        v = centroids[cent[s:e]] + rng.normal(0, 0.03, (e - s, DIM)).astype(np.float32)
        vecs[s:e] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return lon, lat, vecs, centroids


def midway(values, target):
    """A threshold strictly between the target-th and the next smallest value."""
    part = np.partition(values, [target - 1, min(target, len(values) - 1)])
    lo, hi = part[target - 1], part[min(target, len(values) - 1)]
    return lo + (hi - lo) / 2 if hi > lo else lo


def make_filter(kind, sel, lon, lat, rng):
    n = len(lon)
    target = max(1, round(sel * n))
    if sel >= 1.0:
        return {"kind": "all"}, np.ones(n, dtype=bool)
    a = rng.integers(n)
    x, y = lon[a], lat[a]
    if kind == "bbox":
        aspect = rng.uniform(0.5, 2.0)
        need = np.maximum(np.abs(lon - x), np.abs(lat - y) / aspect)
        h = midway(need, target)
        b = [max(x - h, -180.0), max(y - h * aspect, -90.0), min(x + h, 180.0), min(y + h * aspect, 90.0)]
        mask = (lon >= b[0]) & (lon <= b[2]) & (lat >= b[1]) & (lat <= b[3])
        return {"kind": "bbox", "bbox": b}, mask
    if kind == "radius":
        d = haversine_km(x, y, lon, lat)
        km = midway(d, target)
        return {"kind": "radius", "lon": x, "lat": y, "km": km}, d <= km
    # Convex octagon: a regular one, stretched by `aspect` and rotated by `rot`, scaled by s.
    aspect, rot = rng.uniform(0.5, 2.0), rng.uniform(0, np.pi)
    ang = np.arange(8) * np.pi / 4
    unit = np.stack([np.cos(ang), aspect * np.sin(ang)], 1) @ np.array([[np.cos(rot), np.sin(rot)], [-np.sin(rot), np.cos(rot)]])
    unit_ring = [list(p) for p in unit] + [list(unit[0])]
    # Gauge (Minkowski functional) of every point: the scale at which the octagon reaches it.
    g = np.zeros(n)
    for ea, eb, ec in halfplanes(unit_ring):
        g = np.maximum(g, (ea * (lon - x) + eb * (lat - y)) / ec)
    s = midway(g, target)
    ring = clip_world([[x + s * p[0], y + s * p[1]] for p in unit_ring])
    return {"kind": "polygon", "ring": ring}, in_convex(ring, lon, lat)


def make_tiles(lon, lat, rng):
    """Tile footprints for the join: N/10 distinct 0.02° grid cells (≈ a 224-px tile at 10 m)
    at record positions, so most tiles hold photos."""
    n = len(lon)
    tn = max(1, n // 10)
    cells = np.unique(np.stack([np.floor(lon / 0.02), np.floor(lat / 0.02)], 1)[rng.permutation(n)[: 3 * tn]], axis=0)
    cells = cells[rng.permutation(len(cells))[:tn]]
    tiles = np.concatenate([cells * 0.02, cells * 0.02 + 0.02], 1)[:, [0, 1, 2, 3]]
    return np.ascontiguousarray(tiles)


# ---- The patch-level set (PEERS_PATCH=1) ----------------------------------------------------
GRID = 14  # a tile is a GRID × GRID grid of patch vectors (196), row 0 at the north edge
PATCH_SELECTIVITIES = [0.001, 0.01, 0.1, 1.0]
EDGE_MARGIN = 1e-5  # degrees (≈ 1 m) kept between a query box's edge and every patch edge


def patch_edges(tiles):
    """Column edges xs (T × 15, west to east) and row edges ys (T × 15, north to south) of the
    patch grids of axis-aligned tile boxes [w, s, e, n]. The arithmetic is graftdb's
    `patch_footprint` on the ring UL, UR, LR, LL (w + (e − w)·(col / 14), n + (s − n)·(row / 14)),
    so both sides get bit-identical patch boxes."""
    t = np.arange(GRID + 1) / GRID
    w, s, e, n = (tiles[:, i:i + 1] for i in range(4))
    return w + (e - w) * t, n + (s - n) * t


def patch_boxes(tiles):
    """T × 196 × 4 patch boxes [w, s, e, n], patch p = row · 14 + col."""
    xs, ys = patch_edges(tiles)
    shape = (len(tiles), GRID, GRID)
    b = np.stack([np.broadcast_to(xs[:, None, :-1], shape), np.broadcast_to(ys[:, 1:, None], shape),
                  np.broadcast_to(xs[:, None, 1:], shape), np.broadcast_to(ys[:, :-1, None], shape)], -1)
    return b.reshape(len(tiles), GRID * GRID, 4)


def box_mask(boxes, bbox):
    """Boxes [..., w, s, e, n] that intersect bbox [W, S, E, N], boundary included."""
    W, S, E, N = bbox
    return (boxes[..., 0] <= E) & (boxes[..., 2] >= W) & (boxes[..., 1] <= N) & (boxes[..., 3] >= S)


def make_patch_tiles(t, rng):
    """T square tile footprints of 1–5 km at points clustered like the photos, and each tile's
    content centroid: a city-preferred centroid (as the photos pick theirs) + N(0, 0.02²)."""
    lon, lat, city, centroids = positions(t, rng)
    half = rng.uniform(1.0, 5.0, t) / 2 / 111.32  # half side in degrees of latitude
    dlon = half / np.cos(np.radians(lat))
    tiles = np.stack([np.maximum(lon - dlon, -180.0), np.maximum(lat - half, -90.0),
                      np.minimum(lon + dlon, 180.0), np.minimum(lat + half, 90.0)], 1)
    pref = rng.random(t) < 0.7
    cls = np.where(pref, (city * 7 + rng.integers(0, 5, t)) % CENTROIDS, rng.integers(0, CENTROIDS, t))
    tc = centroids[cls] + rng.normal(0, 0.02, (t, DIM)).astype(np.float32)
    tc /= np.linalg.norm(tc, axis=1, keepdims=True)
    return np.ascontiguousarray(tiles), tc, centroids


def clear_edges(b, tiles, xs, ys):
    """Move each edge of bbox b outward until no patch edge lies within EDGE_MARGIN of it, so
    no engine's float handling (PostgreSQL compares boxes with a 1e-6 tolerance) can change
    which patches intersect. Edges on the world's bounds stay."""
    m = EDGE_MARGIN
    for _ in range(100):
        moved = False
        near_y = (tiles[:, 1] <= b[3] + m) & (tiles[:, 3] >= b[1] - m)
        near_x = (tiles[:, 0] <= b[2] + m) & (tiles[:, 2] >= b[0] - m)
        cx, cy = xs[near_y].ravel(), ys[near_x].ravel()
        for i, coords, step, bound in [(0, cx, -m, -180.0), (2, cx, m, 180.0), (1, cy, -m, -90.0), (3, cy, m, 90.0)]:
            if b[i] != bound and np.any(np.abs(coords - b[i]) < m):
                b[i] = min(max(b[i] + step, -180.0 if i % 2 == 0 else -90.0), 180.0 if i % 2 == 0 else 90.0)
                moved = True
        if not moved:
            return b
    raise RuntimeError(f"could not clear the edges of {b}")


def make_patch_filter(sel, tiles, xs, ys, rng):
    """A bbox grown around a random tile's centre until about sel × T tiles intersect it."""
    t = len(tiles)
    if sel >= 1.0:
        return {"kind": "all"}
    a = rng.integers(t)
    x, y = (tiles[a, 0] + tiles[a, 2]) / 2, (tiles[a, 1] + tiles[a, 3]) / 2
    aspect = rng.uniform(0.5, 2.0)
    # A tile intersects [x − h, y − h·aspect, x + h, y + h·aspect] iff h >= need.
    need = np.max(np.stack([tiles[:, 0] - x, x - tiles[:, 2], (tiles[:, 1] - y) / aspect, (y - tiles[:, 3]) / aspect]), 0)
    h = max(midway(need, max(1, round(sel * t))), EDGE_MARGIN)
    b = [max(x - h, -180.0), max(y - h * aspect, -90.0), min(x + h, 180.0), min(y + h * aspect, 90.0)]
    return {"kind": "bbox", "bbox": [float(v) for v in clear_edges(b, tiles, xs, ys)]}


def patch_main(out, t, nq, rng):
    """tiles.npy (T × 4 [w, s, e, n] f64), patches.npy (T·196 × 512 f32, tile-major, then row,
    col), qvecs.npy, queries.json, truth.json. A patch's id is tile · 196 + row · 14 + col."""
    tm = time.time()
    p = GRID * GRID
    tiles, tc, centroids = make_patch_tiles(t, rng)
    np.save(f"{out}/tiles.npy", tiles)
    pv = np.lib.format.open_memmap(f"{out}/patches.tmp.npy", mode="w+", dtype=np.float32, shape=(t * p, DIM))
    ch = 500
    for s in range(0, t, ch):
        e = min(t, s + ch)
        v = np.repeat(tc[s:e], p, axis=0)
        v += 0.03 * rng.standard_normal(v.shape, dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        pv[s * p:e * p] = v
    pv.flush()
    del pv
    print(f"gen: {t} tiles × {p} patches × {DIM} in {time.time() - tm:.1f} s", file=sys.stderr)

    xs, ys = patch_edges(tiles)
    queries, qvecs = [], []
    for sel in PATCH_SELECTIVITIES:
        for _ in range(nq):
            f = make_patch_filter(sel, tiles, xs, ys, rng)
            q = centroids[rng.integers(CENTROIDS)] + rng.normal(0, 0.04, DIM).astype(np.float32)
            qvecs.append((q / np.linalg.norm(q)).astype(np.float32))
            f["sel"] = sel
            f["tiles"] = t if f["kind"] == "all" else int(box_mask(tiles, f["bbox"]).sum())
            queries.append(f)
    qm = np.stack(qvecs)

    # The exact top-k of every query in one pass over the patches (chunks of tiles).
    best = [(np.empty(0, np.float32), np.empty(0, np.int64)) for _ in queries]
    matches = [0] * len(queries)
    tmasks = [None if f["kind"] == "all" else box_mask(tiles, f["bbox"]) for f in queries]
    src = np.load(f"{out}/patches.tmp.npy", mmap_mode="r")
    for s in range(0, t, ch):
        e = min(t, s + ch)
        sc = np.asarray(src[s * p:e * p]) @ qm.T  # rows × queries, f32
        for j, f in enumerate(queries):
            if tmasks[j] is None:
                rows = np.arange((e - s) * p)
            else:
                ti = np.flatnonzero(tmasks[j][s:e])
                if not len(ti):
                    continue
                pm = box_mask(patch_boxes(tiles[s + ti]), f["bbox"])  # len(ti) × 196
                rows = (ti[:, None] * p + np.arange(p))[pm]
            matches[j] += len(rows)
            bs = np.concatenate([best[j][0], sc[rows, j]])
            bi = np.concatenate([best[j][1], s * p + rows])
            top = np.argsort(-bs, kind="stable")[:K]
            best[j] = (bs[top], bi[top])
    del src
    os.replace(f"{out}/patches.tmp.npy", f"{out}/patches.npy")
    truth = [{"matches": matches[j], "tiles": f["tiles"], "ids": best[j][1].tolist(),
              "kth": float(best[j][0][-1]) if len(best[j][0]) else None} for j, f in enumerate(queries)]
    np.save(f"{out}/qvecs.npy", qm)
    with open(f"{out}/queries.json", "w") as fh:
        json.dump({"k": K, "tiles": t, "grid": GRID, "n": t * p, "dim": DIM, "queries": queries}, fh)
    with open(f"{out}/truth.json", "w") as fh:
        json.dump(truth, fh)
    print(f"gen: {len(queries)} patch queries, truth done in {time.time() - tm:.1f} s", file=sys.stderr)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    n = int(os.environ.get("PEERS_N", "1000000"))
    nq = int(os.environ.get("PEERS_Q", "50"))
    rng = np.random.default_rng(int(os.environ.get("PEERS_SEED", "0x6AF7BE4C"), 0))
    t = time.time()
    if os.environ.get("PEERS_PATCH", "0") != "0":
        return patch_main(out, int(os.environ.get("PEERS_PATCH_TILES", "10000")), nq, rng)
    if os.environ.get("PEERS_JOIN_ONLY", "0") != "0":
        lon, lat, _, _ = generate(n, rng, vectors=False)
        np.save(f"{out}/lon.npy", lon)
        np.save(f"{out}/lat.npy", lat)
        tiles = make_tiles(lon, lat, rng)
        np.save(f"{out}/tiles.npy", tiles)
        print(f"gen: join only, {n} points, {len(tiles)} tiles in {time.time() - t:.1f} s", file=sys.stderr)
        return
    lon, lat, vecs, centroids = generate(n, rng)
    np.save(f"{out}/vecs.npy", vecs)
    np.save(f"{out}/lon.npy", lon)
    np.save(f"{out}/lat.npy", lat)
    print(f"gen: {n} × {DIM} in {time.time() - t:.1f} s", file=sys.stderr)

    queries, qvecs, truth = [], [], []
    for sel in SELECTIVITIES:
        for i in range(nq):
            kind = "all" if sel >= 1.0 else KINDS[i % len(KINDS)]
            f, mask = make_filter(kind, sel, lon, lat, rng)
            q = centroids[rng.integers(CENTROIDS)] + rng.normal(0, 0.04, DIM).astype(np.float32)
            q = (q / np.linalg.norm(q)).astype(np.float32)
            idx = np.flatnonzero(mask)
            s = vecs[idx] @ q
            top = idx[np.argsort(-s, kind="stable")[:K]]
            f["sel"] = sel
            queries.append(f)
            qvecs.append(q)
            truth.append({"matches": int(mask.sum()), "ids": top.tolist(), "kth": float(np.sort(s)[-min(K, len(s))]) if len(s) else None})
    np.save(f"{out}/qvecs.npy", np.stack(qvecs))
    with open(f"{out}/queries.json", "w") as fh:
        json.dump({"k": K, "n": n, "dim": DIM, "queries": queries}, fh)
    with open(f"{out}/truth.json", "w") as fh:
        json.dump(truth, fh)

    tiles = make_tiles(lon, lat, rng)
    np.save(f"{out}/tiles.npy", tiles)
    print(f"gen: {len(queries)} queries, {len(tiles)} tiles, done in {time.time() - t:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
