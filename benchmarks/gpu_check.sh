#!/usr/bin/env bash
# The GPU check in one call (issue: "The GPU run"). On the device machine, from the repo root:
#   device run:  bash benchmarks/gpu_check.sh            (carry: .whl, made here by benchmarks/gpu_wheels.sh)
#   anywhere:    bash benchmarks/gpu_check.sh --dry      (tiny sizes; what the test runs)
# Installs what the device lacks from .whl/ (keras, namex, optree, simplejpeg: its image has JAX but no
# TensorFlow or Keras; and, unless GPU_DECODE=0 at fetch time, nvImageCodec and nvJPEG, for the decode="gpu"
# row), picks Keras's backend (TensorFlow if importable, else JAX), then runs
# benchmarks/gpu_check.py, which writes $OUT/gpu.json and $OUT/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
dry=0
for arg in "$@"; do [ "$arg" = --dry ] && dry=1; done
# The wheels are the device's (Python 3.12, manylinux): a dry run here uses what this machine has.
if [ "$dry" = 0 ] && compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/featx-site .whl/*.whl
    # nvImageCodec's wheel makes `nvidia` a regular package, which would hide the device's own nvidia.*
    # CUDA libraries (JAX finds them there); without its __init__.py it is one more namespace portion.
    rm -f /tmp/featx-site/nvidia/__init__.py
    export PYTHONPATH="/tmp/featx-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${KERAS_BACKEND:-}" ]; then
    if python3 -c "import tensorflow" 2> /dev/null; then export KERAS_BACKEND=tensorflow; else export KERAS_BACKEND=jax; fi
fi
{ command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } \
    > "$OUT/device.txt" 2>&1 || true
python3 -c "from featx.extraction import gpu_decode as g; print('gpu decode:', g.missing() or 'available')" \
    >> "$OUT/device.txt" 2>&1 || true
python3 benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu.log"
