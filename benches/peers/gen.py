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


def generate(n, rng, vectors=True):
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


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    n = int(os.environ.get("PEERS_N", "1000000"))
    nq = int(os.environ.get("PEERS_Q", "50"))
    rng = np.random.default_rng(int(os.environ.get("PEERS_SEED", "0x6AF7BE4C"), 0))
    t = time.time()
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
