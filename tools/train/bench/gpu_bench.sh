#!/usr/bin/env bash
# GPU smoke test and throughput benchmark for graft_train (ViT-B/16, random init, synthetic data).
# Usage: tools/train/bench/gpu_bench.sh [OUTDIR]   (run from the repository root)
# Needs a Python with torch (CUDA), open_clip, numpy, pillow, onnx, onnxruntime; set PYTHON.
# (On a host whose Python lacks open_clip/ftfy/wcwidth, copy those pure-Python packages from
# .venv-torch into a folder and put it on PYTHONPATH.)
# What it measures: fit steps/s and tiles/s at batch 128 for bf16 autocast, fp16 autocast +
# GradScaler and fp32; eval; export to ONNX (+ ORT check); then the pytest suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
OUT="${1:-/tmp/graft-gpu-bench}"
PY="${PYTHON:-python3}"
W=/tmp/graft-gpu-work
export PYTHONPATH="$ROOT/tools/train${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$W"
t() { local s=$(date +%s%N); "$@"; echo "TIME $(( ($(date +%s%N) - s) / 1000000 )) ms: $*" >> "$OUT/times.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)" | tee -a "$OUT/gpu.txt"
N_TRAIN=${N_TRAIN:-2048}
[ -f "$W/data/manifest.json" ] || t "$PY" -m graft_train synth --out "$W/data" --train "$N_TRAIN" --test 256 --dim 512
COMMON=(--data "$W/data" --base-arch ViT-B-16 --level both --batch 128 --lr 1e-4 --warmup 20
        --workers 12 --eval-every 0 --log-every 10 --device cuda)
t "$PY" -m graft_train fit "${COMMON[@]}" --out "$W/bf16" --steps "${STEPS:-150}" --save-every 100 --amp on --amp-dtype bf16 > "$OUT/fit_bf16.json"
cp "$W/bf16/log.jsonl" "$OUT/log_bf16.jsonl"
t "$PY" -m graft_train fit "${COMMON[@]}" --out "$W/fp16" --steps 40 --save-every 0 --amp on --amp-dtype fp16 > "$OUT/fit_fp16.json"
cp "$W/fp16/log.jsonl" "$OUT/log_fp16.jsonl"
t "$PY" -m graft_train fit "${COMMON[@]}" --out "$W/fp32" --steps 30 --save-every 0 --amp off > "$OUT/fit_fp32.json"
cp "$W/fp32/log.jsonl" "$OUT/log_fp32.jsonl"
# resume on GPU: continue the bf16 run for 20 more steps
t "$PY" -m graft_train fit "${COMMON[@]}" --out "$W/bf16" --steps "$(( ${STEPS:-150} + 20 ))" --save-every 0 --amp on --amp-dtype bf16 --resume > "$OUT/fit_bf16_resume.json"
t "$PY" -m graft_train eval --data "$W/data" --ckpt "$W/bf16" --device cuda > "$OUT/eval.json"
rm -rf "$W/bundle"
t "$PY" -m graft_train export --ckpt "$W/bf16" --to "$W/bundle" > "$OUT/export.json"
cp "$W/bundle/bundle.json" "$OUT/bundle.json"
ls -la "$W/bundle" > "$OUT/bundle_ls.txt"
if "$PY" -c "import pytest" 2>/dev/null; then
  (cd "$ROOT/tools/train" && "$PY" -m pytest -q -p no:warnings tests 2>&1 | tail -3 | tee "$OUT/pytest.txt") || true
fi
# one summary on stdout: steady-state rates per logged window, and the end results
"$PY" - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for name in ("bf16", "fp16", "fp32"):
    rows = [json.loads(l) for l in (out / f"log_{name}.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in rows if "steps_per_s" in r and "event" not in r]
    steady = sorted(rates[1:])[len(rates[1:]) // 2] if len(rates) > 1 else float("nan")
    done = rows[-1]
    print(f"{name}: median window {steady:.2f} steps/s ({steady * 128:.0f} tiles/s at batch 128); "
          f"loss {done['first_loss']:.2f} -> {done['last_loss']:.2f}; "
          f"image R@10 {done['eval']['image_r@10']:.3f} (chance {done['eval']['image_chance@10']:.3f})")
print((out / "times.txt").read_text())
PY
