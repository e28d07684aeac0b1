#!/usr/bin/env bash
# Fetch, here, the wheels the GPU machine lacks into .whl/ (git-ignored), for the device tool's `carry`.
# Its image has Python 3.12, JAX, h5py, scikit-learn, Pillow, click, tqdm and matplotlib, but no Keras.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in "keras==$(python3 -c 'import keras; print(keras.__version__)')" namex optree simplejpeg; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${plat[@]}" -d .whl "$pkg"
done
ls -la .whl
