#!/usr/bin/env bash
# The three mission commands on a real folder, offline, in a scratch directory.
# Usage: bash examples/cli_workflow.sh [DATA] [IMAGE_SIZE]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="$(realpath "${1:-$here/../../shared/datasets/hymenoptera}")"
size="${2:-64}"
weights="$HOME/.cache/featx-bench/vgg16_hed_notop.weights.h5"
[ -f "$weights" ] || weights=none
work="$(mktemp -d)"
cd "$work"

featx extract --backbone vgg16 --weights "$weights" --image-size "$size" "$data"   # phase one
featx extract --backbone vgg16 --weights "$weights" --image-size "$size" "$data"   # warm: computes nothing
featx fit-head --head dense                                                        # uses the latest extraction
featx fit-head --head logreg
featx compare
featx finetune --unfreeze-blocks 1 --epochs 2 --no-export                          # phase two
featx predict -q -k 2 --out head_preds.csv "$data"                                # latest head
featx predict --model latest -k 2 --out model_preds.csv "$data"                 # the latest fine-tuned model
featx extract --backbone vgg16 --weights "$weights" --image-size "$size" --taps 0,1 "$data"   # one more tap, one pass
featx fit-head --head auto --time-budget 30                                        # head x tap x normalisation search
featx inspect --seeds 2                                                            # leakage, label issues, budget, calibration
head -3 head_preds.csv model_preds.csv
featx cache list
echo "outputs in $work"
