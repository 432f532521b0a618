#!/usr/bin/env bash
# Builds the folders that tools/bench/gpu_bench.sh (CARRY) and gpu_bench_pyort.sh (CARRY2)
# take to a bare GPU machine with no registry access, each under the 64 MiB transfer limit.
#
#   tools/bench/pack_gpu_carry.sh SCRATCH      # SCRATCH: a git-ignored folder
#
# Needs: pip, xz, .venv (onnxruntime 1.31.1, tools/setup.sh), cargo.
set -eu
S=${1:?scratch dir}
mkdir -p "$S/whl" "$S/carry" "$S/carry2" "$S/x"
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    onnxruntime-gpu==1.31.1 open_clip_torch==3.3.0 -d "$S/whl"
(cd "$S/x" && unzip -q -o ../whl/onnxruntime_gpu-1.31.1-*.whl 'onnxruntime/*' && unzip -q -o ../whl/open_clip_torch-*.whl 'open_clip/*')
C=$S/x/onnxruntime/capi
python3 tools/bench/fatbin_keep.py "$C/libonnxruntime_providers_cuda.so" "$S/x/cuda90.so" 90
xz -9e -T2 -c "$S/x/cuda90.so" > "$S/carry/cuda90.so.xz"
xz -9e -c "$C/libonnxruntime.so.1.31.1" > "$S/carry/libort.xz"
cp "$C/libonnxruntime_providers_shared.so" "$S/carry/"
mkdir -p "$S/x/ftfy" && printf 'def fix_text(text, **kw):\n    return text\n' > "$S/x/ftfy/__init__.py"
tar -C "$S/x" -cJf "$S/carry/site.tar.xz" open_clip ftfy
cargo build --release --example embed_throughput
cp target/release/examples/embed_throughput "$S/x/" && strip "$S/x/embed_throughput"
xz -9 -c "$S/x/embed_throughput" > "$S/carry/embed_throughput.xz" && rm -f "$S/carry/embed_throughput"
python3 - "$S/carry/bundle.json" <<'PY'
import json, sys
b = json.load(open("data/bundles/vitb16-random/bundle.json"))
b["text_model"] = None
b.pop("test", None)
json.dump(b, open(sys.argv[1], "w"), indent=1)
PY
.venv/bin/python tools/bench/gpu_vit.py reference data/bundles/vitb16-random "$S/carry/ref_embedding.npy"
# CARRY2: the Python binding, without the libraries CARRY already brings.
rm -rf "$S/x/onnxruntime/"{tools,transformers,quantization,datasets} "$C"/libonnxruntime_providers_{cuda,tensorrt}.so "$C/libonnxruntime.so.1.31.1"
tar -C "$S/x" -cf - onnxruntime | xz -9 -T2 > "$S/carry2/pyort.tar.xz"
du -sh "$S/carry" "$S/carry2"
