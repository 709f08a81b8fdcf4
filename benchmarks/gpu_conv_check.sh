#!/usr/bin/env bash
# The conv nets' GPU checks (issue #22) as one run for a lent GPU machine, whose image holds
# torch and pytest but neither Ray nor MLflow (none is needed here):
#   1. the conv limit on the GPU equals the CPU's (the test that skips without CUDA);
#   2. bench_conv's speed rows on the GPU (structured vs torch.func, roofline);
#   3. whether N = 1,000s of 8×8 and 16×16 images are practical: the CNTK and a width-256
#      CNN's empirical NTK at bench_conv's --points (or $POINTS), with the peak GPU memory;
#   4. the GPU rows of dataset-scale kernels (issue #35): bench_gram_gpu's ms per Gram entry
#      of the 21-layer GAP CNTK and Myrtle-5 at 32×32, float32 and float64 ($GRAM_ARGS
#      passes options, e.g. "--n1 2 --n2 3 --side 16" for a laptop).
# JSON goes to $OUT (the device tool's folder) or ./gpu-out; ~5 min on an H100/H200.
#   DEVICE=cpu POINTS=8:64 bash benchmarks/gpu_conv_check.sh   # the same steps, on a laptop
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
PY=$(command -v python3 || command -v python)
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
"$PY" -m pytest -q -p no:cacheprovider tests/test_convnets.py -k "gpu or device" 2>&1 | tail -4
rc=${PIPESTATUS[0]}
"$PY" benchmarks/bench_conv.py --device "$DEVICE" --only speed > "$OUT/bench_conv_speed.json" \
  && cat "$OUT/bench_conv_speed.json" || rc=1
"$PY" benchmarks/bench_conv.py --device "$DEVICE" --only scale ${POINTS:+--points "$POINTS"} \
  > "$OUT/bench_conv_scale.json" && cat "$OUT/bench_conv_scale.json" || rc=1
"$PY" benchmarks/bench_gram_gpu.py --device "$DEVICE" ${GRAM_ARGS:-} > "$OUT/bench_gram_gpu.json" \
  && cat "$OUT/bench_gram_gpu.json" || rc=1
exit "$rc"
