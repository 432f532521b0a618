#!/usr/bin/env bash
# The main job on a small dataset graftdb makes itself: ingest clustered photos and tile
# footprints with embeddings, then search by vector inside regions and time ranges.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
GRAFTDB_SKIP_TORCH=1 bash tools/setup.sh >/dev/null
cargo build --release --quiet
B=target/release/graftdb
OUT=demo-out
rm -rf "$OUT/db"
mkdir -p "$OUT"
.venv/bin/python tools/demo/make_demo.py "$OUT/data"
run() { echo; echo "\$ graftdb $*"; "$B" "$@"; }
run create "$OUT/db"
run ingest vectors "$OUT/db" "$OUT/data/photos.parquet" --space demo --kind photo
run ingest vectors "$OUT/db" "$OUT/data/tiles.parquet" --space demo --kind tile
echo; echo "# 'water' photos in a box around Paris"
run query "$OUT/db" --space demo --vector "$OUT/data/query-water.json" --bbox 1.8,48.5,2.9,49.2 -k 5 --explain
echo; echo "# 'solar-farm' tiles within 25 km of Suva, Fiji, beside the antimeridian"
run query "$OUT/db" --space demo --vector "$OUT/data/query-solar-farm.json" --near=-18.14,178.44 --radius-km 25 --kind tile -k 5
echo; echo "# photos in a box across the antimeridian, taken in 2021"
run query "$OUT/db" --space demo --vector "$OUT/data/query-harbour.json" --bbox 178,-19,-179,-17 --from 2021-01-01 --to 2021-12-31 -k 5 --explain
echo; echo "# inside a polygon with a hole (Nairobi), as GeoJSON"
run query "$OUT/db" --space demo --vector "$OUT/data/query-forest.json" --polygon "POLYGON((36.6 -1.5,37.0 -1.5,37.0 -1.1,36.6 -1.1,36.6 -1.5),(36.78 -1.33,36.86 -1.33,36.86 -1.25,36.78 -1.25,36.78 -1.33))" -k 2 --format geojson
run join "$OUT/db" --out "$OUT/pairs.jsonl"
run check "$OUT/db"
run export "$OUT/db" "$OUT/demo.parquet"
run stats "$OUT/db"
