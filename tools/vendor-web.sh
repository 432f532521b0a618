#!/usr/bin/env bash
# Unpack the map page's JavaScript libraries from their npm packages into vendor/web/
# (gitignored); build.rs compiles them into the graftdb binary so `graftdb serve`'s page
# works with no internet. Pinned versions; npm checks each tarball's registry integrity.
#
#   leaflet 1.9.4 (BSD-2-Clause), leaflet-draw 1.0.4 (MIT), leaflet.heat 0.2.0 (BSD-2-Clause)
#
# Idempotent: does nothing when vendor/web/.versions matches. Needs npm and tar.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/vendor/web"
want="leaflet@1.9.4 leaflet-draw@1.0.4 leaflet.heat@0.2.0"
if [[ -f "$out/.versions" && "$(cat "$out/.versions")" == "$want" ]]; then
  echo "vendor-web: $out up to date ($want)"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# shellcheck disable=SC2086
(cd "$tmp" && npm pack --silent $want >/dev/null)
rm -rf "$out.part" && mkdir -p "$out.part/images"
for t in "$tmp"/*.tgz; do
  d="$tmp/$(basename "$t" .tgz)"; mkdir -p "$d"; tar -xzf "$t" -C "$d"
done
L="$tmp/leaflet-1.9.4/package"; D="$tmp/leaflet-draw-1.0.4/package"; H="$tmp/leaflet.heat-0.2.0/package"
cp "$L/dist/leaflet.js" "$L/dist/leaflet.css" "$out.part/"
cp "$L/dist/images/"*.png "$out.part/images/"
cp "$D/dist/leaflet.draw.js" "$D/dist/leaflet.draw.css" "$out.part/"
cp "$D/dist/images/spritesheet.png" "$D/dist/images/spritesheet-2x.png" "$D/dist/images/spritesheet.svg" "$out.part/images/"
cp "$H/dist/leaflet-heat.js" "$out.part/"
cp "$L/LICENSE" "$out.part/LICENSE-leaflet.txt"
cp "$H/LICENSE" "$out.part/LICENSE-leaflet.heat.txt"
echo "$want" > "$out.part/.versions"
rm -rf "$out" && mv "$out.part" "$out"
echo "vendor-web: unpacked $want into $out"
