#!/usr/bin/env bash
# graftdb development setup. Idempotent: a second run only checks and exits quickly.
#
# Installs (CI runs this as root on a fresh Debian 12 machine):
#   - apt: libgdal-dev gdal-bin chromium (and python3-venv when `python3 -m venv` is missing);
#     chromium runs the map page's browser test (tests/serve_web.rs)
#   - .venv        onnxruntime==1.31.1 onnx numpy pyarrow   (ONNX Runtime for the `ort` crate)
#   - .venv-torch  torch open-clip-torch onnx onnxruntime==1.31.1 numpy pytest pyarrow   (exporters and
#                  tools/train, ~5 GB, ~1.3 min on a fresh machine)
#   - data/bundles/tiny and data/bundles/vitb16-random: model bundles with seeded random
#     weights, exported by tools/export (no network needed)
#   - test imagery via tools/fetch-data.sh when that script exists
#   - vendor/web: Leaflet, Leaflet.draw, Leaflet.heat from npm (tools/vendor-web.sh), compiled
#     into the binary for `graftdb serve`'s map page
#   - tools/web-e2e/node_modules: playwright-core (npm ci from its lock file)
#
# Environment: PYTHON (interpreter used to create the venvs, default python3),
#              GRAFTDB_SKIP_TORCH=1 skips .venv-torch and the bundle export.
set -euo pipefail
# No pip wheel cache: the torch wheels alone would add ~3 GB to a CI machine's disk.
export PIP_NO_CACHE_DIR=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
START=$(date +%s)
DID=()
say() { printf 'setup: %s\n' "$*"; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

# --- apt -------------------------------------------------------------------------------
need_apt=()
for p in libgdal-dev gdal-bin chromium; do
    dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    need_apt+=(python3-venv python3-pip)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    t=$(date +%s)
    if [ "$(id -u)" -ne 0 ]; then
        SUDO=sudo
    else
        SUDO=
    fi
    say "apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
    DID+=("apt: installed ${need_apt[*]} ($(elapsed "$t"))")
else
    say "apt packages present (libgdal-dev gdal-bin chromium)"
fi

# --- venvs -----------------------------------------------------------------------------
# make_venv DIR STAMP PACKAGES...: (re)installs only when the requested package list changed.
make_venv() {
    local dir="$1"; shift
    local want="$*"
    local stamp="$dir/.graftdb-packages"
    if [ -x "$dir/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        say "$dir present ($want)"
        return 0
    fi
    local t
    t=$(date +%s)
    say "creating $dir: pip install $want"
    [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null
    # shellcheck disable=SC2086
    "$dir/bin/python" -m pip install -q $want
    echo "$want" > "$stamp"
    DID+=("$dir: installed $want ($(elapsed "$t"))")
}

make_venv .venv "onnxruntime==1.31.1 onnx numpy pyarrow"
ORT_LIB=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1 || true)
if [ -z "$ORT_LIB" ]; then
    say "ERROR: libonnxruntime.so.* not found in .venv after install" >&2
    exit 1
fi
say "ONNX Runtime library: $ORT_LIB"

if [ "${GRAFTDB_SKIP_TORCH:-0}" != "1" ]; then
    make_venv .venv-torch "torch open-clip-torch onnx onnxscript onnxruntime==1.31.1 numpy pytest pyarrow"

    # --- model bundles (seeded random weights; real weights are the user's to bring) ----
    # export_if_stale NAME ARGS...: re-export when the bundle is missing or the exporter changed.
    export_if_stale() {
        local name="$1"; shift
        local out="data/bundles/$name"
        local src_hash
        src_hash=$(cat tools/export/*.py | sha256sum | cut -c1-16)
        if [ -f "$out/bundle.json" ] && [ -f "$out/.exporter-hash" ] \
            && [ "$(cat "$out/.exporter-hash")" = "$src_hash" ]; then
            say "bundle $out up to date"
            return 0
        fi
        local t
        t=$(date +%s)
        say "exporting bundle $out ($*)"
        .venv-torch/bin/python -m tools.export "$@" --out "$out"
        echo "$src_hash" > "$out/.exporter-hash"
        DID+=("exported $out ($(elapsed "$t"))")
    }
    export_if_stale tiny --arch tiny --random-seed 0
    export_if_stale vitb16-random --arch ViT-B-16 --random-seed 0
fi

# --- test data (another script owns it) -------------------------------------------------
if [ -f tools/fetch-data.sh ]; then
    t=$(date +%s)
    say "running tools/fetch-data.sh"
    bash tools/fetch-data.sh
    DID+=("ran tools/fetch-data.sh ($(elapsed "$t"))")
fi

# --- the map page: vendored Leaflet, and playwright-core for its browser test -------------
t=$(date +%s)
bash tools/vendor-web.sh
lock_hash=$(sha256sum tools/web-e2e/package-lock.json | cut -c1-16)
if [ ! -f tools/web-e2e/node_modules/playwright-core/package.json ] \
    || [ "$(cat tools/web-e2e/node_modules/.graftdb-lock-hash 2>/dev/null)" != "$lock_hash" ]; then
    say "npm ci in tools/web-e2e (playwright-core; the browser is Debian's chromium)"
    (cd tools/web-e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
    echo "$lock_hash" > tools/web-e2e/node_modules/.graftdb-lock-hash
    DID+=("tools/web-e2e: npm ci ($(elapsed "$t"))")
else
    say "tools/web-e2e/node_modules present"
fi

say "done in $(elapsed "$START")"
if [ ${#DID[@]} -eq 0 ]; then
    say "nothing to do: everything was already set up"
else
    for d in "${DID[@]}"; do say "  - $d"; done
fi
