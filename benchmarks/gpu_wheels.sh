#!/usr/bin/env bash
# Fetch, here, the wheels the GPU machine lacks into .whl/ (git-ignored), for the device tool's `carry`.
# Its image has Python 3.12, JAX, h5py, scikit-learn, Pillow, click, tqdm and matplotlib, but no Keras.
#   bash benchmarks/gpu_wheels.sh                 keras, namex, optree, simplejpeg (about 3 MB), and
#                                                 nvImageCodec with nvJPEG for the decode="gpu" row (about 37 MB)
#   GPU_DECODE=0 bash benchmarks/gpu_wheels.sh    without nvImageCodec
# The working tree travels with .whl/ and both together must stay under 64 MiB (the size check at the end). The CUDA 12 builds run on the device's CUDA 13 driver.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pkgs=("keras==$(python3 -c 'import keras; print(keras.__version__)')" namex optree simplejpeg)
if [ "${GPU_DECODE:-1}" = 1 ]; then
    pkgs+=("nvidia-nvimgcodec-cu12>=0.9" nvidia-nvjpeg-cu12)
else
    rm -f .whl/nvidia_nvimgcodec_cu12-*.whl .whl/nvidia_nvjpeg_cu12-*.whl
fi
for pkg in "${pkgs[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${plat[@]}" -d .whl "$pkg"
done
ls -la .whl
# What the device tool sends: tracked and untracked-not-ignored files, plus .whl/ (carried).
travel=$( { git ls-files -z --cached --others --exclude-standard; find .whl -type f -print0; } \
    | xargs -0 stat -c %s -- | awk '{s += $1} END {printf "%.1f", s / 1048576}')
echo "the working tree with .whl/ comes to ${travel} MiB (the device tool's limit: 64 MiB)"
if awk "BEGIN {exit !($travel > 60)}"; then
    echo "warning: over 60 MiB; a call carrying .whl may be refused (GPU_DECODE=0 leaves nvImageCodec out)" >&2
fi
