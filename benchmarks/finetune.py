"""Fine-tuning benchmark: the cached dense head vs the same model fine-tuned.

On ../shared/datasets/hymenoptera with the real VGG16 (HED) weights: extract,
fit the dense head on cached features, then fine-tune backbone + head with the
last block(s) unfrozen. Prints validation accuracy before and after and the
wall time of each phase. The best validation epoch is restored, so the
fine-tuned model never ends below the head it started from.

Usage::

    python benchmarks/finetune.py                          # 128 px, last block, 5 epochs
    python benchmarks/finetune.py --unfreeze-blocks 2 --epochs 8 --augment flip,rotate=0.05
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _common import parser  # noqa: E402  (benchmarks/ is on sys.path when run as a script)



def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--unfreeze-blocks", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--augment", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import featx

    work = Path(tempfile.mkdtemp(prefix="featx-ft-"))
    try:
        t = time.perf_counter()
        featx.extract(args.data, args.backbone, weights=args.weights, image_size=args.image_size,
                      cache_dir=work / "cache", progress=False, precision="float32", log=lambda m: None)
        extract_s = time.perf_counter() - t
        t = time.perf_counter()
        head = featx.fit_head("dense", cache_dir=work / "cache", out=work / "head", seed=args.seed)
        head_s = time.perf_counter() - t
        t = time.perf_counter()
        res = featx.finetune(work / "head", unfreeze_blocks=args.unfreeze_blocks, cache_dir=work / "cache",
                             out=work / "model", epochs=args.epochs, lr=args.lr, augment=args.augment, seed=args.seed,
                             export=False, log=lambda m: None)
        ft_s = time.perf_counter() - t
        m = res.metrics
        print(f"\n{args.backbone} {args.image_size}px, weights {Path(args.weights).name}, {args.data.name}; "
              f"fine-tuning the last {args.unfreeze_blocks} block(s), {m['epochs_run']} epochs at lr {args.lr:g}"
              f"{', augment ' + args.augment if args.augment else ''}; "
              f"trainable {res.trainable_params:,} / frozen {res.frozen_params:,} params; "
              f"parity max diff {res.parity_max_diff:.1e}\n")
        print("| stage | wall seconds | val accuracy | val macro-F1 |\n|---|---|---|---|")
        hv = head.metrics["splits"]["val"]
        print(f"| extraction (once) | {extract_s:.1f} | | |")
        print(f"| dense head on cached features | {head_s:.1f} | {hv['accuracy']:.4f} | {hv['macro_f1']:.4f} |")
        b, a = m["before"]["val"], m["after"]["val"]
        print(f"| rebuilt end-to-end model, before fine-tuning | | {b['accuracy']:.4f} | {b['macro_f1']:.4f} |")
        print(f"| after fine-tuning (best epoch restored) | {ft_s:.1f} | {a['accuracy']:.4f} | {a['macro_f1']:.4f} |")
        print("\nval accuracy per epoch: " + ", ".join(f"{v:.4f}" for v in m["history"].get("val_accuracy", [])))
        for note in res.notes:
            print(f"note: {note}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
