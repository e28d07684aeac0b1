"""Fine-tuning benchmark: the head `fit-head --head auto` picks vs the same model fine-tuned with the defaults.

On ../shared/datasets/hymenoptera with the real VGG16 (HED) weights: extract
at 150 px, fit the head by `--head auto` on cached features, then fine-tune
with every default (what to unfreeze and the augmentation chosen by data
size, discriminative learning rates, validation on rows the start head has
not seen). Prints validation (and test, when the data has it) accuracy
before and after, and the wall and CPU time of each phase.

Usage::

    python benchmarks/finetune.py                              # 150 px, defaults
    python benchmarks/finetune.py --epochs 5 --augment flip --lr 3e-5   # any finetune setting
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
    ap.set_defaults(image_size=150)
    ap.add_argument("--unfreeze-blocks", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--augment", default=None)
    ap.add_argument("--lr", type=float, default=None, help="finetune --lr (default: featx's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import featx

    work = Path(tempfile.mkdtemp(prefix="featx-ft-"))
    clock = []

    def timed(what, fn):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        clock.append((what, time.perf_counter() - t, time.process_time() - c))
        return out

    try:
        timed("extraction (once)", lambda: featx.extract(
            args.data, args.backbone, weights=args.weights, image_size=args.image_size, cache_dir=work / "cache",
            progress=False, log=lambda m: None))
        head = timed("head (--head auto) on cached features", lambda: featx.fit_head(
            "auto", cache_dir=work / "cache", out=work / "head", home=work, seed=args.seed, log=lambda m: None))
        logs = []
        res = timed("fine-tuning (defaults)", lambda: featx.finetune(
            work / "head", unfreeze_blocks=args.unfreeze_blocks, cache_dir=work / "cache", out=work / "model", home=work,
            epochs=args.epochs, augment=args.augment, seed=args.seed, export=False, log=logs.append,
            **({} if args.lr is None else {"lr": args.lr})))
        m = res.metrics
        print(f"\n{args.backbone} {args.image_size}px, weights {Path(args.weights).name}, {args.data.name}; "
              f"head: {head.metrics['head']}; {m['epochs_run']} epochs, best {m['best_epoch']}")
        for line in logs:
            if line.startswith(("unfroze:", "augmentation:", "learning rates:", "warm-up:", "note:", "validation:")):
                print(line)
        print("\n| stage | wall s | CPU s (user+sys) |\n|---|---|---|")
        for what, wall, cpu in clock:
            print(f"| {what} | {wall:.0f} | {cpu:.0f} |")
        print("\n| split | head (before) | fine-tuned (after) |\n|---|---|---|")
        for split in m["after"]:
            print(f"| {split} | {m['before'][split]['accuracy']:.4f} | {m['after'][split]['accuracy']:.4f} |")
        print("\nval accuracy per epoch: " + ", ".join(f"{v:.4f}" for v in m["history"].get("val_accuracy", [])))
        for note in res.notes:
            print(f"note: {note}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
