#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run every test:
# Rust unit, integration and doc tests, the benchmarks compiled (not run), and the Python
# tests of the exporter and the trainer. CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tools/setup.sh

# Disk: CI builds once from a clean tree, so incremental caches only cost space, and the
# benchmarks are compiled to prove they build, not profiled, so they carry no debug info.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | tail -n1 | awk '{print "disk before build: " $4 " free"}'

echo "== cargo build (all targets) and benchmarks compiled, not run"
cargo build --workspace --all-targets
CARGO_PROFILE_BENCH_DEBUG=0 CARGO_PROFILE_RELEASE_DEBUG=0 cargo bench --workspace --no-run
df -h . | tail -n1 | awk '{print "disk after build: " $4 " free"}'

echo "== cargo test"
cargo test --workspace

if [ -x .venv-torch/bin/python ]; then
    .venv-torch/bin/python -m pip install -q pytest >/dev/null 2>&1 || true
    for d in tools/train/tests tools/export/tests; do
        if [ -d "$d" ]; then
            echo "== pytest $d"
            (cd "$(dirname "$d")" && ../../.venv-torch/bin/python -m pytest -q tests)
        fi
    done
fi
