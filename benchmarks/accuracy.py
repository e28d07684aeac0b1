"""Accuracy of the extraction options (pooling, flip TTA, multi-scale) with ``--head auto``.

One row per recipe and dataset: the recipe's extractions (VGG16, ``--taps 0,1,2``
and the recipe's options), then ``fit-head --head auto`` on the pool of every
extraction in the recipe's own cache, every choice made without looking at the
reported split:

- intel6: 5-fold CV on train (``--selection cv``), test reported;
- hymenoptera: CV on train (``--selection cv``), val reported as test; and the
  usual optimistic protocol (``--selection val``: chosen on val, val reported).

Each recipe has a cache of its own under ROOT (so that ``--head auto`` pools only
its extractions); the multi-scale recipe starts from a copy of the default one and
adds the 224 px extraction. Extraction seconds are measured once, when the
extraction is computed (wall, and CPU = user + sys of this process, all threads),
and kept in ROOT/accuracy.json with every result, so the script resumes where it
stopped and prints the whole table from that file.

Usage::

    python ../shared/bench/make_vgg16_hed_weights.py ROOT/vgg16_hed_notop.weights.h5
    python benchmarks/accuracy.py --root ROOT --weights ROOT/vgg16_hed_notop.weights.h5 [--recipes default,gem]
    python benchmarks/accuracy.py --root ROOT --table        # print the table only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
TAPS = (0, 1, 2)

# name: (label, extractions, the recipe whose cache it starts from). Every extraction taps 0,1,2.
RECIPES: dict[str, tuple[str, list[dict], str | None]] = {
    "default": ("default (avg pooling)", [{}], None),
    "avgmax": ("--pooling avg,max", [{"pooling": "avg,max"}], None),
    "gem": ("--pooling gem", [{"pooling": "gem"}], None),
    "flip": ("--tta flip", [{"tta": "flip"}], None),
    "multiscale": ("multi-scale 150 + 224 px", [{}, {"image_size": 224}], "default"),
    "gem-flip": ("--pooling gem --tta flip", [{"pooling": "gem", "tta": "flip"}], None),
}
# dataset: (the split reported, [(selection protocol, label)]); --optimistic adds hymenoptera's
# usual protocol (chosen on val, val reported).
PROTOCOLS = {
    "intel6": ("test", [("cv", "CV on train")]),
    "hymenoptera": ("val", [("cv", "CV on train")]),
}
OPTIMISTIC = ("val", "val (optimistic)")


def cache_of(root: Path, recipe: str) -> Path:
    return root / ("cache" if recipe == "default" else f"cache-{recipe}")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _options(opts: dict, size: int) -> str:
    flags = [f"--image-size {opts.get('image_size', size)}", "--taps 0,1,2"]
    if opts.get("pooling", "avg") != "avg":
        flags.append(f"--pooling {opts['pooling']}")
    if opts.get("tta", "none") != "none":
        flags.append(f"--tta {opts['tta']}")
    return " ".join(flags)


def command(recipe: str, dataset: str, protocol: str, size: int) -> str:
    c = f"C={cache_of(Path('ROOT'), recipe).name}"
    extracts = "; ".join(f"featx --cache-dir $C extract -b vgg16 --weights $W {_options(o, size)} $D"
                         for o in RECIPES[recipe][1])
    return f"{c} D=../shared/datasets/{dataset}; {extracts}; featx --cache-dir $C fit-head --data $D --head auto " \
           f"--selection {protocol}"


def run(args, results: dict) -> None:
    import featx

    for recipe in args.recipes:
        _, extractions, seed_from = RECIPES[recipe]
        cache = cache_of(args.root, recipe)
        if seed_from and not cache.exists() and cache_of(args.root, seed_from).exists():
            shutil.copytree(cache_of(args.root, seed_from), cache)
        for dataset in args.datasets:
            data = str(DATASETS / dataset)
            for opts in extractions:
                key = f"extract|{cache.name}|{dataset}|{json.dumps(opts, sort_keys=True)}"
                t, c = time.perf_counter(), _cpu()
                res = featx.extract(data, "vgg16", weights=args.weights, image_size=opts.get("image_size", args.image_size),
                                    taps=list(TAPS), pooling=opts.get("pooling", "avg"), tta=opts.get("tta", "none"),
                                    cache_dir=cache, progress=False, log=lambda m: None)
                wall, cpu = time.perf_counter() - t, _cpu() - c
                if res.computed and key not in results:  # timed only when computed here
                    results[key] = {"wall_s": wall, "cpu_s": cpu, "computed": res.computed}
                    _save(args.root, results)
                print(f"{recipe} {dataset} {opts}: {res.summary()} ({wall:.0f} s wall, {cpu:.0f} s CPU)", flush=True)
            split, protocols = PROTOCOLS[dataset]
            if args.optimistic and split == "val":
                protocols = [*protocols, OPTIMISTIC]
            for protocol, _ in protocols:
                key = f"head|{recipe}|{dataset}|{protocol}"
                if key in results and not args.refit:
                    continue
                t, c = time.perf_counter(), _cpu()
                fit = featx.fit_head("auto", data=data, cache_dir=cache, home=args.root / "home", selection=protocol,
                                     seed=0)
                m = fit.metrics
                sel = m["selection"]
                chosen = " ".join(f"{k}={v}" for k, v in sel["chosen"].items())
                results[key] = {
                    "head": f"{m['head']}, {'+'.join(_short(e) for e in m['extractions'])}, {sel['normalise']}"
                            + (f", {chosen}" if chosen else ""),
                    "score": sel["score"], "spread": sel["spread"], "protocol": protocol,
                    "reported": m["splits"][split]["accuracy"], "split": split,
                    "fit_wall_s": time.perf_counter() - t, "fit_cpu_s": _cpu() - c, "directory": str(fit.directory),
                }
                _save(args.root, results)
                print(f"{recipe} {dataset} {protocol}: {results[key]}", flush=True)


def _short(extraction: str) -> str:
    """``vgg16-150px-gem-cut1-<key>`` -> ``150px cut1``."""
    parts = extraction.split("-")[1:-1]
    return " ".join(p for p in parts if p.endswith("px") or p.startswith("cut")) or extraction


def _save(root: Path, results: dict) -> None:
    tmp = root / ".accuracy.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
    os.replace(tmp, root / "accuracy.json")


def table(args, results: dict) -> str:
    rows = ["| dataset | option | protocol | head chosen | CV / val score | test accuracy | extraction s CPU / wall (images) "
            "| command |", "|---|---|---|---|---|---|---|---|"]
    for dataset in args.datasets:
        split, protocols = PROTOCOLS[dataset]
        if split == "val":
            protocols = [*protocols, OPTIMISTIC]  # shown where measured
        for recipe in RECIPES:
            cache = cache_of(args.root, recipe)
            ext = [results.get(f"extract|{cache.name}|{dataset}|{json.dumps(o, sort_keys=True)}") for o in RECIPES[recipe][1]]
            if RECIPES[recipe][2]:  # its 150 px extraction is the default's, copied
                ext[0] = results.get(f"extract|cache|{dataset}|{json.dumps({}, sort_keys=True)}")
            # the images computed in the timed run: fewer where an interrupted run had cached some
            secs = (f"{sum(e['cpu_s'] for e in ext):.0f} / {sum(e['wall_s'] for e in ext):.0f} "
                    f"({'+'.join(str(e['computed']) for e in ext)} img)" if all(ext) else "")
            for protocol, label in protocols:
                r = results.get(f"head|{recipe}|{dataset}|{protocol}")
                if not r:
                    continue
                score = f"{r['score']:.3f}" + (f" ± {r['spread']:.3f}" if r.get("spread") else "")
                test = f"{r['reported']:.4f}" + (" (val)" if split == "val" else "")
                rows.append(f"| {dataset} | {RECIPES[recipe][0]} | {label} | {r['head']} | {score} | {test} | {secs} "
                            f"| `{command(recipe, dataset, protocol, args.image_size)}` |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="caches, heads and accuracy.json go here")
    ap.add_argument("--weights", default=None, help="VGG16 HED weights (default: ROOT/vgg16_hed_notop.weights.h5)")
    ap.add_argument("--image-size", type=int, default=150)
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {'; '.join(RECIPES)}")
    ap.add_argument("--datasets", default="intel6,hymenoptera")
    ap.add_argument("--optimistic", action="store_true", help="also choose on hymenoptera's val (and report it)")
    ap.add_argument("--refit", action="store_true", help="fit the heads again even where results exist")
    ap.add_argument("--table", action="store_true", help="only print the table of the results so far")
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    args.weights = args.weights or str(args.root / "vgg16_hed_notop.weights.h5")
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        sys.exit(f"Unknown recipe(s) {unknown}; known: {list(RECIPES)}")
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    path = args.root / "accuracy.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if not args.table:
        run(args, results)
    print(table(args, results))


if __name__ == "__main__":
    main()
