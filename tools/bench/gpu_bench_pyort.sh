#!/usr/bin/env bash
# Follow-up to tools/bench/gpu_bench.sh on the same (still warm) machine: the same ONNX
# Runtime 1.31.1 CUDA EP through its Python binding, to time what graftdb's Rust path
# cannot express today: I/O binding (input and outputs stay on the GPU), fp16, and
# use_tf32 on/off. Needs /tmp/graftdb-ort and /tmp/graftdb-vit from gpu_bench.sh.
#
#   tools/bench/gpu_bench_pyort.sh CARRY2 OUT      # CARRY2/pyort.tar.xz: the wheel's
#   onnxruntime/ package without its .so libraries but the pybind module and providers_shared
set -u
C=${1:?carry dir}
O=${2:?output dir}
L=/tmp/graftdb-ort
V=/tmp/graftdb-vit
exec > >(tee "$O/bench-pyort.log") 2>&1
export PYTHONUNBUFFERED=1
if [ ! -s "$L/libonnxruntime_providers_cuda.so" ] || [ ! -s "$V/image.onnx" ]; then
    echo "gpu_bench_pyort: $L or $V missing: the machine is not the one gpu_bench.sh ran on"; exit 2
fi
P=/tmp/graftdb-pyort
mkdir -p "$P"
python3 -c 'import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$C/pyort.tar.xz" "$P"
ln -sf "$L/libonnxruntime_providers_cuda.so" "$P/onnxruntime/capi/"
export PYTHONPATH="$P:/tmp/graftdb-site"
SP=$(python3 -c 'import site; print(site.getsitepackages()[0])')
LD_LIBRARY_PATH=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:)
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 200 > "$O/smi-pyort.csv" &
SMI=$!
MODELS="$V/image.onnx"
[ -s "$V/image_fp16.onnx" ] && MODELS="$MODELS,$V/image_fp16.onnx"
timeout "${PYORT_TIMEOUT:-240}" python3 tools/bench/gpu_vit.py ort --model "$MODELS" --batches "${BATCHES:-64,256}" \
    --seconds "${ORT_SECONDS:-3}" --tf32 "${TF32:-on,off}" 2>&1 | tee "$O/pyort.log"
kill $SMI
python3 tools/bench/smi_summary.py "$O/smi-pyort.csv" "$O/pyort.log" | tee "$O/util-pyort.md"
