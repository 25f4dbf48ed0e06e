#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU, from the repository root:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Parts (each isolated under its own time budget; one failing part does not stop the others; at most 9 min in all):
#   env         versions, GPU name
#   tests       pytest -m gpu (CUDA-only tests: batch-first attention on CUDA, SDPA flash/efficient kernels,
#               bf16 autocast with fp32 master weights and losses, CUDA peak memory metric, torch.compile)
#   peak        bf16 matmul peak of the GPU
#   step        bf16 Stage-2 step of ViT-L-14-336 at 518 px (random init), batch 2 and 16: time, MFU, memory
#   compile     the same step (batch 16) with model.compile: true
#   throughput  1, 2, 4 trials sharing the GPU (gpu: 1, 0.5, 0.25) on aaclip-small, as concurrent fit processes
# Results: $OUT/<part>.json and $OUT/<part>.log, and $OUT/summary.txt (also printed at the end).
# Packages the machine lacks travel as wheels in .whl/ (see README, "GPU check") and go to a private folder.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
: > "$OUT/summary.txt"
export AACLIP_HOME=${AACLIP_HOME:-$(mktemp -d /tmp/aaclip-home.XXXXXX)}
export HF_HUB_OFFLINE=1
SITE=/tmp/aaclip-gpu-site
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl > "$OUT/wheels.log" 2>&1 \
        || echo "wheels: install failed (see wheels.log)" >> "$OUT/summary.txt"
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
part() {  # part NAME BUDGET_S COMMAND...: run under a hard time limit, log, one summary line
    local name=$1 budget=$2 started rc
    shift 2
    started=$(date +%s)
    timeout --kill-after=15 "$budget" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    local status="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT after ${budget}s"; elif [ "$rc" -ne 0 ]; then status="FAILED rc=$rc"; fi
    echo "$name: $status ($(( $(date +%s) - started ))s)" >> "$OUT/summary.txt"
}

part env 30 "$PY" -c "import sys, torch, open_clip; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('open_clip', open_clip.__version__); print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"
part tests 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/unit/test_gpu.py
part peak 30 "$PY" benchmarks/gpu_check.py peak --out "$OUT"
part step 90 "$PY" benchmarks/gpu_check.py step --out "$OUT"
part compile 120 "$PY" benchmarks/gpu_check.py compile --out "$OUT"
part throughput 120 "$PY" benchmarks/gpu_check.py throughput --out "$OUT"

"$PY" - "$OUT" >> "$OUT/summary.txt" 2>&1 <<'PYTHON' || true
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
peak, step, compiled, trials = load("peak"), load("step"), load("compile"), load("throughput")
if peak:
    print(f"bf16 matmul peak: {peak['peak_tflops']:.0f} TFLOP/s on {peak['device']}")
for label, result in (("step", step), ("step, compiled", compiled)):
    for row in (result or {}).get("rows", []):
        mfu = f", MFU {100 * row['mfu']:.0f}%" if "mfu" in row else ""
        print(f"{label}: {result['model']} bf16 batch {row['batch']}: {1000 * row['step_s']:.0f} ms/step, "
              f"{row['images_per_s']:.1f} img/s{mfu}, peak {row['peak_memory_gb']:.1f} GB")
for row in (trials or {}).get("rows", []):
    print(f"trials per GPU {row['trials_per_gpu']}: {row['trials_per_hour']:.0f} trials/h "
          f"(x{row['speedup_vs_1']:.2f} vs 1)")
PYTHON
echo "== GPU check summary ($OUT) =="
cat "$OUT/summary.txt"
