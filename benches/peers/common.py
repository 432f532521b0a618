"""Shared by the Python adapters: load the dataset gen.py wrote, time queries, write the
common adapter JSON ({engine, mode, ingest_s, build_s, disk_bytes, peak_rss_kb,
results: [{ms, ids, plan?}], join?})."""
import json
import os
import resource
import sys
import time

import numpy as np


def load(data):
    return (
        np.load(f"{data}/vecs.npy", mmap_mode="r"),
        np.load(f"{data}/lon.npy"),
        np.load(f"{data}/lat.npy"),
        np.load(f"{data}/qvecs.npy"),
        json.load(open(f"{data}/queries.json")),
    )


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def self_peak_rss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_queries(qs, run, warmup=20):
    """run(i, q) -> (ids, plan or None). Times each call alone, single thread, after warm-up."""
    for i, q in enumerate(qs[:warmup]):
        run(i, q)
    results = []
    for i, q in enumerate(qs):
        t = time.perf_counter()
        ids, plan = run(i, q)
        ms = (time.perf_counter() - t) * 1e3
        r = {"ms": ms, "ids": [int(x) for x in ids]}
        if plan is not None:
            r["plan"] = plan
        results.append(r)
    return results


def write(out, doc):
    with open(out, "w") as fh:
        json.dump(doc, fh)
    print(f"{doc['engine']}: wrote {out}", file=sys.stderr)


class Timer:
    def __enter__(self):
        self.t = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.s = time.perf_counter() - self.t
