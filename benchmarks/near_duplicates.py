"""Near duplicates that users mean: recall and false positives on real photos with planted copies.

Copies of hymenoptera train photos are planted in val, one copy per
original, made five ways: flipped (mirror image, quality 90), cropped (the
central 90%), resized (half size), recompressed (JPEG quality 60) and
colour-jittered (brightness, contrast and saturation within +-20%). Every
photo is extracted with VGG16 and the offline HED weights
(``../shared/bench/make_vgg16_hed_weights.py``) at each size given, and the
near-duplicate search is scored under two rules:

- ``fixed``: cosine >= 0.95 (featx before the adaptive rule);
- ``adaptive``: featx's default (see ``featx.inspection.NearRule``).

A hit is a reported pair (original, its copy). A false positive is any
other reported pair. hymenoptera itself holds a few pairs of genuinely
near photos (the same insect shot twice), so the script also prints every
false positive's paths: look at them before calling them errors.

Usage::

    python benchmarks/near_duplicates.py                       # 64 and 128 px, 12 copies of each kind
    python benchmarks/near_duplicates.py --sizes 128 --per-kind 20
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:  # see inspect_report.py
    sys.path.append(sys.path.pop(0))

import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from _common import parser  # noqa: E402

KINDS = ("flipped", "cropped", "resized", "recompressed", "jittered")


def make_copy(src: Path, dst: Path, kind: str, rng: np.random.Generator) -> None:
    from PIL import Image, ImageEnhance, ImageOps

    with Image.open(src) as im:
        im = im.convert("RGB")
        quality = 90
        if kind == "flipped":
            im = ImageOps.mirror(im)
        elif kind == "cropped":
            w, h = im.size
            dw, dh = round(0.05 * w), round(0.05 * h)
            im = im.crop((dw, dh, w - dw, h - dh))
        elif kind == "resized":
            im = im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.BILINEAR)
        elif kind == "recompressed":
            quality = 60
        elif kind == "jittered":
            for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                im = enhance(im).enhance(float(rng.uniform(0.8, 1.2)))
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, quality=quality)


def plant(data: Path, out: Path, per_kind: int, seed: int = 0) -> dict[str, tuple[str, str]]:
    """hymenoptera copied to ``out``, with ``per_kind`` copies of each kind planted in val.

    Returns {copy path: (original path, kind)}.
    """
    shutil.copytree(data, out)
    rng = np.random.default_rng(seed)
    originals = sorted(out.glob("train/*/*.jpg"))
    chosen = rng.choice(len(originals), per_kind * len(KINDS), replace=False)
    copies = {}
    for k, i in enumerate(chosen):
        src, kind = originals[i], KINDS[k % len(KINDS)]
        dst = out / "val" / src.parent.name / f"copy-{kind}-{src.name}"
        make_copy(src, dst, kind, rng)
        copies[str(dst)] = (str(src), kind)
    return copies


def score(pairs: list[dict], copies: dict) -> tuple[dict, list[dict]]:
    """Recall per kind, and the reported pairs that are not planted."""
    found = {frozenset((p["path_a"], p["path_b"])) for p in pairs}
    planted = {frozenset((c, o)) for c, (o, _) in copies.items()}
    recall = {}
    for kind in KINDS:
        want = [frozenset((c, o)) for c, (o, k) in copies.items() if k == kind]
        recall[kind] = (sum(w in found for w in want), len(want))
    return recall, [p for p in pairs if frozenset((p["path_a"], p["path_b"])) not in planted]


def main():
    ap = parser(__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--per-kind", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import featx
    from featx import inspection

    rows, fps_all = [], []
    with tempfile.TemporaryDirectory(dir=os.environ.get("FEATX_SCRATCH")) as tmp:
        data = Path(tmp) / "data"
        copies = plant(args.data, data, args.per_kind, args.seed)
        n = sum(1 for _ in data.glob("*/*/*.jpg"))
        print(f"{n} photos: hymenoptera + {len(copies)} planted copies in val "
              f"({args.per_kind} of each: {', '.join(KINDS)})")
        for size in args.sizes:
            cache = Path(tmp) / f"cache{size}"
            t = time.perf_counter()
            featx.extract(data, args.backbone, weights=args.weights, image_size=size, cache_dir=cache, progress=False)
            took = time.perf_counter() - t
            f = featx.load_features(cache_dir=cache)
            for name, rule in (("fixed 0.95", inspection.NearRule(threshold=0.95, adaptive=False)),
                               ("adaptive", inspection.NearRule())):
                d = inspection.find_duplicates(f, rule)
                recall, fps = score(d["near_pairs"], copies)
                rows.append((size, name, recall, len(fps), d.get("rule", ""), took))
                fps_all += [(size, name, p) for p in fps]
        print(f"\n{args.backbone}, weights {Path(args.weights).name}; a hit is a reported (original, copy) pair\n")
        print("| px | rule | " + " | ".join(KINDS) + " | recall | false positives | rule as applied |")
        print("|---|---|" + "---|" * len(KINDS) + "---|---|---|")
        for size, name, recall, nfp, desc, _ in rows:
            hits = sum(h for h, _ in recall.values())
            total = sum(t for _, t in recall.values())
            cells = " | ".join(f"{h}/{t}" for h, t in recall.values())
            print(f"| {size} | {name} | {cells} | {hits}/{total} | {nfp} | {desc} |")
        if fps_all:
            print("\nreported pairs that were not planted:")
            for size, name, p in fps_all:
                print(f"  {size}px {name}: {p['rel_a']} ~ {p['rel_b']} cosine {p['similarity']:.3f}")


if __name__ == "__main__":
    main()
