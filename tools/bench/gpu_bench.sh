#!/usr/bin/env bash
# ViT-B/16 image embedding on one GPU: graftdb's Rust path (`ort`, CUDA EP, onnxruntime-gpu
# 1.31.1) against PyTorch eager on the same model, batch and precision, with nvidia-smi
# sampling GPU utilisation every 200 ms. Results: bench-results/embed-gpu.md.
#
#   tools/bench/gpu_bench.sh CARRY OUT
#
# CARRY holds what a bare GPU machine lacks (tools/bench/pack_gpu_carry.sh makes it):
#   cuda90.so.xz   libonnxruntime_providers_cuda.so from the onnxruntime-gpu==1.31.1 wheel,
#                  with the fatbin payloads of every GPU architecture but sm_90 zeroed
#                  (tools/bench/fatbin_keep.py) so that it compresses below the transfer limit
#   libort.xz      libonnxruntime.so.1.31.1 from the same wheel
#   libonnxruntime_providers_shared.so
#   site.tar.xz    open_clip 3.3.0 (its source, vocabulary left out) and a stub `ftfy`
#   embed_throughput.xz   `cargo build --release --example embed_throughput`, stripped
#   bundle.json    data/bundles/vitb16-random/bundle.json without the text model
#   ref_embedding.npy  `gpu_vit.py reference data/bundles/vitb16-random ...`
# The machine needs PyTorch with CUDA 13 and its nvidia-* wheels (cuBLAS, cuDNN 9, ...).
#
# Knobs (environment): VARIANTS (embed_throughput variants), BATCHES, SECONDS_PER,
# TORCH_SECONDS, TORCH_PRECISIONS, TORCH_TF32 (off,on), FP16= (empty: no fp16 export).
set -u
C=${1:?carry dir}
O=${2:?output dir}
L=/tmp/graftdb-ort
V=/tmp/graftdb-vit
mkdir -p "$L" "$V" /tmp/graftdb-site "$O"
exec > >(tee "$O/bench.log") 2>&1
export PYTHONUNBUFFERED=1

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
lscpu | grep -m1 'Model name'
echo "cores: $(nproc)"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'

echo "== unpack"
t0=$(date +%s.%N)
unxz_to() {  # xz if the machine has it, else Python's lzma
    if command -v xz >/dev/null; then xz -T4 -dc "$1" > "$2"
    else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; fi
}
unxz_to "$C/cuda90.so.xz" "$L/libonnxruntime_providers_cuda.so" & X1=$!
unxz_to "$C/libort.xz" "$L/libonnxruntime.so.1.31.1" & X2=$!
cp "$C/libonnxruntime_providers_shared.so" "$L/"
python3 -c 'import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$C/site.tar.xz" /tmp/graftdb-site
export PYTHONPATH=/tmp/graftdb-site
SP=$(python3 -c 'import site; print(site.getsitepackages()[0])')
LD_LIBRARY_PATH=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:)
export LD_LIBRARY_PATH

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 200 > "$O/smi.csv" &
SMI=$!

echo "== export (same module as tools/export, OpenCLIP ViT-B-16, seed 0)"
python3 tools/bench/gpu_vit.py export --out "$V" ${FP16---fp16} --check "$C/ref_embedding.npy"
cp "$C/bundle.json" "$V/" && touch "$V/bpe_simple_vocab_16e6.txt.gz"
wait $X1 $X2
awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "unpacked and exported in %.1f s\n", b - a }'
sha256sum "$L"/*.so* | cut -c1-16

echo "== graftdb (Rust, ort, CUDA EP) and ort alone (examples/embed_throughput.rs variants)"
E=$C/embed_throughput
if [ -f "$C/embed_throughput.xz" ]; then  # pack_gpu_carry.sh compresses it to fit the limit
    E=/tmp/graftdb-embed_throughput && unxz_to "$C/embed_throughput.xz" "$E"
fi
chmod +x "$E"
for v in ${VARIANTS:-full raw-patches embedding-only ort-default ort-tf32 ort-notf32}; do
    GRAFTDB_ORT_LIB="$L/libonnxruntime.so.1.31.1" timeout 100 "$E" "$V" cuda "${BATCHES:-64,256}" "${SECONDS_PER:-5}" "$v" 2>&1
done | tee "$O/rust.log"

echo "== PyTorch eager"
timeout 200 python3 tools/bench/gpu_vit.py torch --batches "${BATCHES:-64,256}" --seconds "${TORCH_SECONDS:-3}" \
    --precisions "${TORCH_PRECISIONS:-fp32,fp16}" --tf32 "${TORCH_TF32:-off,on}" 2>&1 | tee "$O/torch.log"

kill $SMI
echo "== GPU utilisation per run"
python3 tools/bench/smi_summary.py "$O/smi.csv" "$O/rust.log" "$O/torch.log" | tee "$O/util.md"
