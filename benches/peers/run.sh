#!/usr/bin/env bash
# The peer benchmark (issue 5): graftdb against PostgreSQL + pgvector, LanceDB, Qdrant Edge and
# numpy brute force on one dataset, one query set, one machine, in one run. See README.md.
#
#   benches/peers/run.sh                      # the target: N = 1,000,000, 50 queries per selectivity
#   PEERS_N=100000 benches/peers/run.sh       # what one session can run on a 2-core VM
#
# Env: PEERS_N, PEERS_Q (queries per selectivity), PEERS_ENGINES (subset of
# "numpy graftdb qdrant lance pg", plus "qdrant-rs": Qdrant Edge through the Rust crate, nightly
# toolchain, not in the default list), PEERS_WORK (scratch dir, default benches/peers/work),
# PEERS_JOIN=0 to skip the photo→tile join, PEERS_RUN (output dir, default WORK/run-N).
# PEERS_JOIN_ONLY=1: the photo→tile join alone, N photos × N/10 tiles, no vectors (data in
# WORK/join-N, output in WORK/join-run-N, engines "graftdb pg"); the report fails unless both
# engines find the same pairs. PEERS_PATCH=1: the patch-level set instead, PEERS_PATCH_TILES
# tiles (default 10000) × 196 patch vectors, Q bbox queries per selectivity (data in
# WORK/patch-T-qQ, output in WORK/patch-run-T). PEERS_PYTHON: use that interpreter (with the
# peers already installed) instead of creating and filling benches/peers/.venv.
# Everything it starts (one PostgreSQL server on a unix socket inside the work dir, no TCP)
# is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
N="${PEERS_N:-1000000}"
Q="${PEERS_Q:-50}"
ENGINES="${PEERS_ENGINES:-numpy graftdb qdrant lance pg}"
WORK="${PEERS_WORK:-$HERE/work}"
JOIN_ONLY="${PEERS_JOIN_ONLY:-0}"
PATCH="${PEERS_PATCH:-0}"
T="${PEERS_PATCH_TILES:-10000}"
if [ "$PATCH" != 0 ] && [ "$JOIN_ONLY" != 0 ]; then echo "PEERS_PATCH and PEERS_JOIN_ONLY exclude each other" >&2; exit 2; fi
if [ "$PATCH" != 0 ]; then
  export PEERS_PATCH=1
  DATA="$WORK/patch-$T-q$Q"
  RUN="${PEERS_RUN:-$WORK/patch-run-$T}"
elif [ "$JOIN_ONLY" != 0 ]; then
  export PEERS_JOIN_ONLY=1
  ENGINES="${PEERS_ENGINES:-graftdb pg}"
  DATA="$WORK/join-$N"
  RUN="${PEERS_RUN:-$WORK/join-run-$N}"
else
  DATA="$WORK/data-$N-q$Q"
  RUN="${PEERS_RUN:-$WORK/run-$N}"
fi
VENV="$HERE/.venv"
PY="${PEERS_PYTHON:-$VENV/bin/python}"
mkdir -p "$WORK" "$RUN"

cleanup() {
  # Stop the PostgreSQL server if an adapter died before stopping it (its postmaster pid).
  local pidfile="$RUN/pg/postmaster.pid"
  if [ -f "$pidfile" ]; then
    local pid; pid="$(head -1 "$pidfile")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -INT "$pid" || true; fi
  fi
}
trap cleanup EXIT INT TERM

if [ -z "${PEERS_PYTHON:-}" ]; then
  if [ ! -x "$PY" ]; then python3 -m venv "$VENV"; fi
  "$PY" -m pip install -q --disable-pip-version-check -r "$HERE/requirements.txt"
fi

if [[ " $ENGINES " == *" graftdb "* ]]; then
  (cd "$HERE/graftdb-adapter" && cargo build --release -q)
fi
ADAPTER="${CARGO_TARGET_DIR:-$HERE/graftdb-adapter/target}/release/graftdb-peer-adapter"
# qdrant-rs: Qdrant Edge through the qdrant-edge crate (Rust, in-process), not in the default
# list: it needs the nightly toolchain (`rustup toolchain install nightly`) and its first release
# build takes ~10 min on the 2-vCPU VM (see README.md).
if [[ " $ENGINES " == *" qdrant-rs "* ]]; then
  (cd "$HERE/qdrant-edge-adapter" && cargo +nightly build --release -q)
fi
QADAPTER="${CARGO_TARGET_DIR:-$HERE/qdrant-edge-adapter/target}/release/qdrant-edge-peer-adapter"

if [ "$PATCH" != 0 ]; then
  if [ ! -f "$DATA/truth.json" ]; then PEERS_PATCH_TILES="$T" PEERS_Q="$Q" "$PY" "$HERE/gen.py" "$DATA"; fi
elif [ "$JOIN_ONLY" != 0 ]; then
  if [ ! -f "$DATA/tiles.npy" ]; then PEERS_N="$N" "$PY" "$HERE/gen.py" "$DATA"; fi
elif [ ! -f "$DATA/truth.json" ]; then
  PEERS_N="$N" PEERS_Q="$Q" "$PY" "$HERE/gen.py" "$DATA"
fi

# Query latency is single-threaded for every engine: one caller, one query at a time; BLAS
# held to one thread for numpy; Qdrant's search pool is one thread; PostgreSQL runs no
# parallel workers. Index builds use both cores where an engine can.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
LOAD="$RUN/load.txt"
: > "$LOAD"
OUTS=()
for e in $ENGINES; do
  echo "== $e  $(date -u +%FT%TZ)  load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$LOAD" >&2
  case "$e" in
    numpy)   "$PY" "$HERE/adapter_numpy.py" "$DATA" "$RUN" "$RUN/numpy.json"; OUTS+=("$RUN/numpy.json") ;;
    graftdb) "$ADAPTER" "$DATA" "$RUN" "$RUN/graftdb.json"; OUTS+=("$RUN/graftdb.json") ;;
    qdrant)  "$PY" "$HERE/adapter_qdrant.py" "$DATA" "$RUN" "$RUN/qdrant.json"; OUTS+=("$RUN/qdrant.json")
             efs="${PEERS_QDRANT_EFS:-}"
             for ef in ${efs//,/ }; do OUTS+=("$RUN/qdrant-ef$ef.json"); done
             if [ "${PEERS_QDRANT_EXACT:-0}" != 0 ]; then OUTS+=("$RUN/qdrant-exact.json"); fi ;;
    qdrant-rs) "$QADAPTER" "$DATA" "$RUN" "$RUN/qdrant-rs.json"; OUTS+=("$RUN/qdrant-rs.json")
             efs="${PEERS_QDRANT_EFS:-}"
             for ef in ${efs//,/ }; do OUTS+=("$RUN/qdrant-rs-ef$ef.json"); done
             if [[ "${PEERS_QDRANT_EXACT:-0}" != 0 ]]; then OUTS+=("$RUN/qdrant-rs-exact.json"); fi ;;
    lance)   "$PY" "$HERE/adapter_lance.py" "$DATA" "$RUN" "$RUN/lance.json"; OUTS+=("$RUN/lance.json" "$RUN/lance-exact.json") ;;
    pg)      "$PY" "$HERE/adapter_pg.py" "$DATA" "$RUN" "$RUN/pg.json"; OUTS+=("$RUN/pg.json") ;;
    *) echo "unknown engine $e" >&2; exit 2 ;;
  esac
  echo "   $e done $(date -u +%FT%TZ)  load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$LOAD" >&2
done
# The report's heading: title, machine, run time and the load at each engine's start and end.
report_head() {
  echo "# $1"
  echo
  echo "- Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(grep -c ^processor /proc/cpuinfo) logical cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM"
  echo "- Run: $(date -u +%FT%TZ); load averages (1/5/15 min) at each engine's start and end:"
  echo '```'
  cat "$LOAD"
  echo '```'
  echo
}
if [ "$PATCH" != 0 ]; then
  {
    report_head "Peer benchmark, patch level, $T tiles × 196 patches, $Q queries per selectivity"
    "$PY" "$HERE/report.py" --patch "$DATA" "${OUTS[@]}"
  } | tee "$RUN/peers-patch-$T.md"
  exit "${PIPESTATUS[0]}"
fi
if [ "$JOIN_ONLY" != 0 ]; then
  {
    report_head "Peer benchmark, spatial join only, $N photos"
    "$PY" "$HERE/report.py" --join "${OUTS[@]}"
  } | tee "$RUN/peers-join-$N.md"
  exit "${PIPESTATUS[0]}"
fi
{
  report_head "Peer benchmark, N = $N, $Q queries per selectivity"
  "$PY" "$HERE/report.py" "$DATA" "${OUTS[@]}"
} | tee "$RUN/peers-$N.md"
