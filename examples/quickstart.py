"""featx from Python, end to end, on a real folder.

Extract features once, fit three heads in seconds, compare them, and label
new images. Runs offline with the VGG16 weights that
../shared/bench/make_vgg16_hed_weights.py writes (or random weights).

    python examples/quickstart.py
    python examples/quickstart.py --data my_images/ --backbone resnet50 --weights imagenet
"""

import argparse
import tempfile
from pathlib import Path

import featx

HERE = Path(__file__).resolve().parent
VGG_HED = Path.home() / ".cache" / "featx-bench" / "vgg16_hed_notop.weights.h5"

ap = argparse.ArgumentParser()
ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "datasets" / "hymenoptera"))
ap.add_argument("--backbone", default="vgg16")
ap.add_argument("--weights", default=str(VGG_HED) if VGG_HED.exists() else "none")
ap.add_argument("--image-size", type=int, default=64)
ap.add_argument("--cache-dir", default=None, help="default: a temporary folder")
args = ap.parse_args()
work = Path(tempfile.mkdtemp(prefix="featx-example-"))
cache = args.cache_dir or work / "cache"

# Phase one: the backbone runs once; a second call would reuse every row. Two
# taps from that one pass: the last block's pooled output and the block before.
result = featx.extract(args.data, args.backbone, weights=args.weights, image_size=args.image_size, taps=[0, 1],
                       cache_dir=cache)
print(result.summary())

features = featx.load_features(args.data, cache_dir=cache)
print(features.describe(), "->", features.X.shape)

# Heads on the cached features: seconds each.
for kind in ("logreg", "lightgbm", "dense"):
    fit = featx.fit_head(kind, data=args.data, cache_dir=cache, out=work / f"head-{kind}", home=work)
    val = fit.metrics["splits"]["val"]
    print(f"{kind:>8}: val accuracy {val['accuracy']:.3f}, macro-F1 {val['macro_f1']:.3f} ({fit.fit_seconds:.2f}s)")

# Let featx pick head kind x tap (or both fused) x normalisation by the same protocol.
auto = featx.fit_head("auto", data=args.data, cache_dir=cache, out=work / "head-auto", home=work, time_budget=30)
print(auto.leaderboard)
print(f"    auto: {auto.metrics['head']} on {' + '.join(auto.metrics['extractions'])}, "
      f"val accuracy {auto.metrics['splits']['val']['accuracy']:.3f}")

# Label a few images with the logistic head (cached features are reused).
images = [item.path for item in featx.discover(args.data).items[:3]]
preds = featx.predict(images, head=work / "head-logreg", cache_dir=cache, progress=False)
for path, top in zip(preds.paths, preds.top(1)):
    print(f"{Path(path).name}: {top[0][0]} ({top[0][1]:.2f})")
