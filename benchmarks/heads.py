"""Heads benchmark: fit times, featx vs the frozen-backbone way, a sweep, scale.

1. Fit time and validation accuracy of each head on the same cached features.
2. The seeds' way: a Keras model with the frozen backbone inside, trained on
   images for E epochs (every epoch re-runs the backbone), vs featx's dense
   head with the same layers trained for the same E epochs on cached
   features. Wall time ratio and both accuracies.
3. A 12-configuration sweep of the dense head on the cached features.
4. Logistic regression and LightGBM on 10,000 x 2,048 features (synthetic,
   10 classes) on this machine: target under 30 s each; then `--head auto`
   (5-fold CV on the 8,000 training rows, refit): target under 2 minutes.

Usage::

    python benchmarks/heads.py                       # hymenoptera, VGG16 HED weights, 128 px
    python benchmarks/heads.py --epochs 5 --skip-scale
    python benchmarks/heads.py --scale-only          # section 4 only: 10k x 2048 synthetic
    python benchmarks/heads.py --auto-only           # the `--head auto` row on 10k x 2048 only
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _common import parser  # noqa: E402  (benchmarks/ is on sys.path when run as a script)



def frozen_backbone_way(data: Path, backbone: str, weights: str, size: int, epochs: int, seed: int):
    """The notebook: backbone frozen inside the model, trained on images every epoch."""
    import numpy as np

    from featx import backbones as B
    from featx.runtime import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(seed)
    bb = B.get_backbone(backbone)
    t = time.perf_counter()
    base = B.build_backbone(bb, B.resolve_weights(weights), size, pooling="avg")
    base.trainable = False
    pre = getattr(keras.applications, bb.module).preprocess_input
    load = dict(image_size=(size, size), batch_size=32, label_mode="int", verbose=False, seed=seed)
    train = keras.utils.image_dataset_from_directory(data / "train", shuffle=True, **load)
    val = keras.utils.image_dataset_from_directory(data / "val", shuffle=False, **load)
    inp = keras.Input((size, size, 3))
    x = base(pre(inp), training=False)
    x = keras.layers.Dense(256)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    out = keras.layers.Dense(len(train.class_names), activation="softmax")(x)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(train, validation_data=val, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - t
    return seconds, float(np.max(hist.history["val_accuracy"])), float(hist.history["val_accuracy"][-1])


def default_dense(X, y, protocol, seed: int):
    """The dense head as `featx fit-head` fits it on data without a val split: (head, seconds, how it chose).

    Selection by ``protocol`` (K folds) with the default budget; the fold-1
    model when the full CV would overrun it, else the refit on all rows.
    """
    from featx.heads import make_head
    from featx.selection import select

    t = time.perf_counter()
    best, _ = select("dense", X, y, protocol, {"seed": seed}, holdout_ok=True)
    head = best.estimator if best.holdout is not None else (
        make_head("dense", **{"seed": seed, **best.params, **best.chosen}).fit(X, y))
    how = f"chosen on fold 1: {best.holdout_note.split(': ', 1)[1]}" if best.holdout is not None else "5-fold CV + refit"
    return head, time.perf_counter() - t, how


def scale(args):
    """Section 4: 10,000 x 2,048 synthetic features.

    Each head fitted on 8,000 rows with the 2,000 others as its validation
    split; then the default head (dense) as `featx fit-head` fits it on data
    with no val split (5-fold CV + refit when that fits the 20 s dense
    budget, else chosen on fold 1); then `--head auto` by 5-fold CV.
    """
    import numpy as np

    from featx.heads import make_head
    from featx.selection import cv_protocol, search

    rng = np.random.default_rng(0)
    n, d, c = 10000, 2048, 10
    centers = rng.normal(size=(c, d)).astype("float32") * 0.08
    y = rng.integers(0, c, n)
    X = centers[y] + rng.normal(size=(n, d)).astype("float32")
    lab = np.array([f"c{i}" for i in range(c)])[y]
    print(f"\n4. {n} x {d} synthetic features, {c} classes (8,000 train / 2,000 held out), "
          f"{os.cpu_count()} cores\n\n| head | fit seconds | held-out accuracy |\n|---|---|---|")
    verdicts = []
    for kind in () if args.auto_only else ("logreg", "lightgbm", "dense"):
        t = time.perf_counter()
        h = make_head(kind).fit(X[:8000], lab[:8000], eval_set=(X[8000:], lab[8000:]))
        secs = time.perf_counter() - t
        print(f"| {kind} (chosen on the held-out rows) | {secs:.1f} | {(h.predict(X[8000:]) == lab[8000:]).mean():.4f} |",
              flush=True)
        verdicts.append(f"{kind} {secs:.1f}s {'<' if secs < 30 else '>='} 30s")
    ytr = lab[:8000]
    protocol = cv_protocol(np.unique(ytr, return_inverse=True)[1], sorted(set(ytr)), 5, args.seed)
    if not args.auto_only:
        h, secs, how = default_dense(X[:8000], ytr, protocol, args.seed)
        print(f"| dense, `featx fit-head` defaults without a val split ({how}) | {secs:.1f} | "
              f"{(h.predict(X[8000:]) == lab[8000:]).mean():.4f} |", flush=True)
        verdicts.append(f"dense default {secs:.1f}s {'<' if secs < 30 else '>='} 30s")
    t, cpu = time.perf_counter(), time.process_time()
    trials = search({"synthetic": X[:8000]}, ytr, protocol, base={"seed": args.seed}, budget_s=args.auto_budget)
    best = trials[0]
    h = make_head(best.kind, **{"seed": args.seed, **best.params, **best.chosen}).fit(X[:8000], ytr)
    secs, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"(auto: {secs:.1f} s wall, {cpu:.1f} s CPU of this process; load average {os.getloadavg()[0]:.1f})")
    print(f"| auto: {best.kind} normalise={best.normalise} {' '.join(f'{k}={v}' for k, v in best.chosen.items())} "
          f"(5-fold CV on the 8,000, refit on them) | {secs:.1f} | {(h.predict(X[8000:]) == lab[8000:]).mean():.4f} |")
    verdicts.append(f"auto {secs:.1f}s {'<' if secs < 120 else '>='} 120s")
    print("\nauto leaderboard:")
    for tr in trials:
        r = tr.row("cv")
        print(f"  {r['head']:<8} {r['normalise']:<8} {r['params']:<24} cv {r['cv_acc']} +- {r['cv_std']}  "
              f"{r['fit_s']}s {r['note']}")
    print(f"\ntarget (heads under 30 s each, auto under 120 s): {'; '.join(verdicts)}")


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-frozen", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--auto-only", action="store_true", help="Only the synthetic `--head auto` row.")
    ap.add_argument("--scale-only", action="store_true", help="Only section 4 (10k x 2,048 synthetic).")
    ap.add_argument("--auto-budget", type=float, default=90.0, help="Seconds for the auto search.")
    args = ap.parse_args(argv)
    if args.auto_only or args.scale_only:
        scale(args)
        return

    import numpy as np

    import featx
    from featx.features import make_splits
    from featx.heads import DenseHead, make_head

    work = Path(tempfile.mkdtemp(prefix="featx-heads-"))
    try:
        t = time.perf_counter()
        res = featx.extract(args.data, args.backbone, weights=args.weights, image_size=args.image_size,
                            cache_dir=work / "cache", progress=False, precision="float32", log=lambda m: None)
        extract_s = time.perf_counter() - t
        f = featx.load_features(args.data, cache_dir=work / "cache")
        sp = make_splits(f, seed=args.seed)
        names = np.array(f.class_names)
        Xtr, ytr, Xva, yva = sp.train.X, names[sp.train.y], sp.val.X, names[sp.val.y]
        print(f"\n{args.backbone} {args.image_size}px, weights {Path(args.weights).name}, {args.data} "
              f"(train {len(ytr)}, val {len(yva)}; extraction {extract_s:.1f}s for {res.total} images)")

        print("\n1. Heads on the same cached features\n\n| head | fit seconds | val accuracy |\n|---|---|---|")
        for kind in ("dense", "logreg", "lightgbm"):
            t = time.perf_counter()
            h = make_head(kind, seed=args.seed).fit(Xtr, ytr, eval_set=(Xva, yva))
            print(f"| {kind} | {time.perf_counter() - t:.2f} | {(h.predict(Xva) == yva).mean():.4f} |", flush=True)

        if not args.skip_frozen:
            t = time.perf_counter()
            dense = DenseHead(hidden=(256,), epochs=args.epochs, patience=args.epochs, seed=args.seed)
            dense.fit(Xtr, ytr, eval_set=(Xva, yva))
            head_s = time.perf_counter() - t
            acc_best = float(np.max(dense.history_["val_accuracy"]))
            acc_last = float(dense.history_["val_accuracy"][-1])
            frozen_s, f_best, f_last = frozen_backbone_way(args.data, args.backbone, args.weights, args.image_size,
                                                          args.epochs, args.seed)
            print(f"\n2. Same dense head, {args.epochs} epochs: frozen backbone inside the model vs cached features\n")
            print("| way | wall seconds | val acc (last epoch) | val acc (best epoch) | speed-up |\n|---|---|---|---|---|")
            print(f"| frozen backbone in the model (image_dataset_from_directory) | {frozen_s:.1f} | {f_last:.4f} | "
                  f"{f_best:.4f} | 1x |")
            print(f"| featx dense head on cached features | {head_s:.1f} | {acc_last:.4f} | {acc_best:.4f} | "
                  f"{frozen_s / head_s:.0f}x |")
            print(f"| featx incl. the one-time extraction | {head_s + extract_s:.1f} | | | "
                  f"{frozen_s / (head_s + extract_s):.1f}x |")
            gap = 100 * abs(acc_best - f_best)
            met = frozen_s / head_s >= 20 and gap <= 1.0
            print(f"\ntarget (>= 20x at equal accuracy within 1 point, best epochs): "
                  f"{frozen_s / head_s:.0f}x, {gap:.1f} points apart -> {'met' if met else 'NOT met'}")

        print("\n3. Sweep: 12 dense-head configurations on the cached features\n")
        print("| hidden | dropout | lr | val accuracy | seconds |\n|---|---|---|---|---|")
        t_all = time.perf_counter()
        best = (0.0, None)
        for hidden, dropout, lr in itertools.product([(256,), (512, 128)], [0.3, 0.5], [1e-3, 3e-4, 1e-4]):
            t = time.perf_counter()
            h = DenseHead(hidden=hidden, dropout=dropout, lr=lr, seed=args.seed).fit(Xtr, ytr, eval_set=(Xva, yva))
            acc = float((h.predict(Xva) == yva).mean())
            best = max(best, (acc, (hidden, dropout, lr)))
            print(f"| {','.join(map(str, hidden))} | {dropout} | {lr:g} | {acc:.4f} | {time.perf_counter() - t:.1f} |",
                  flush=True)
        print(f"\nsweep total {time.perf_counter() - t_all:.1f}s; best val accuracy {best[0]:.4f} with {best[1]}")

        if not args.skip_scale:
            scale(args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
