"""What the benchmark scripts share: the real dataset, the offline weights, their options, generated JPEGs."""

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HYMENOPTERA = HERE.parent.parent / "shared" / "datasets" / "hymenoptera"
VGG_HED = Path.home() / ".cache" / "featx-bench" / "vgg16_hed_notop.weights.h5"


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with --data, --backbone, --weights and --image-size.

    Defaults: hymenoptera, VGG16 with the HED weights from
    ../shared/bench/make_vgg16_hed_weights.py (random weights if absent), 128 px.
    """
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HYMENOPTERA)
    ap.add_argument("--backbone", default="vgg16")
    ap.add_argument("--weights", default=str(VGG_HED) if VGG_HED.exists() else "none")
    ap.add_argument("--image-size", type=int, default=128)
    return ap


def framework_env(**extra: str) -> dict:
    """This process's environment for a child Python with the framework's own CPU-kernel
    choice (featx's import sets TF_ENABLE_ONEDNN_OPTS when unset), plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}, **extra}


# --------------------------------------------------------------------------- generated JPEGs

# kind: (px by default, class folders, JPEG quality)
JPEG_KINDS = {"noise": (64, 10, 85), "small": (32, 10, 85), "photo": (400, 6, 90), "rolled": (500, 3, 90)}
ROLLED_PICTURES = 20


def make_jpegs(folder: Path, n: int, kind: str = "photo", *, px: int | None = None, seed: int = 0) -> Path:
    """``n`` generated JPEGs ``c<i % classes>/<i>.jpg`` under ``folder``, every file's bytes distinct.

    ``kind`` (``px`` defaults to the first number):

    ``noise``
        ``px`` x ``px`` uniform noise, quality 85, 10 classes.
    ``small``
        32 to 48 px (``px`` to 1.5 ``px``) a side, a colour per class plus
        noise, quality 85, 10 classes.
    ``photo``
        400 to 800 px (``px`` to 2 ``px``) a side, smooth shapes and grain,
        quality 90, 6 classes.
    ``rolled``
        500 x 375 px (``px`` x 3/4 ``px``), as ``../shared/bench/host_scaling.py``
        makes them: 20 smooth pictures with noise, each used for every 20th
        file and saved with the file's own comment, quality 90, 3 classes.

    The same arguments give the same images. A finished set leaves
    ``<folder>.done`` beside ``folder`` and is returned as it is; an
    unfinished one is completed, and files already there are kept (a
    smaller set renamed to this one is extended).
    """
    import numpy as np
    from PIL import Image

    default_px, classes, quality = JPEG_KINDS[kind]
    done = folder.parent / f"{folder.name}.done"
    if done.exists():
        return folder
    paint = _painter(kind, np.random.default_rng(seed), px or default_px, classes)
    for c in range(min(n, classes)):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for i in range(n):
        pixels, comment = paint(i)  # drawn even for a file that exists: the next ones stay the same
        path = folder / f"c{i % classes}" / f"{i}.jpg"
        if not path.exists():
            Image.fromarray(pixels).save(path, quality=quality, **({"comment": comment} if comment else {}))
        if i and i % 20000 == 0:
            print(f"  made {i} of {n} JPEGs ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    done.touch()
    return folder


def _painter(kind: str, rng, px: int, classes: int):
    """``paint(i) -> (pixels, comment)`` for image ``i`` of a ``kind`` set (a comment only where pictures repeat)."""
    import numpy as np
    from PIL import Image

    if kind == "noise":
        return lambda i: (rng.integers(0, 256, (px, px, 3), dtype=np.uint8), b"")
    if kind == "small":
        base = rng.integers(0, 256, (classes, 1, 1, 3))

        def small(i):
            h, w = rng.integers(px, px * 3 // 2 + 1, 2)
            return np.clip(base[i % classes] + rng.integers(-60, 60, (h, w, 3)), 0, 255).astype(np.uint8), b""

        return small
    if kind == "photo":

        def photo(i):
            w, h = int(rng.integers(px, 2 * px + 1)), int(rng.integers(px, 2 * px + 1))
            coarse = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
            return np.clip(img + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8), b""

        return photo
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    pictures: list = []
    w, h = px, px * 3 // 4

    def rolled(i):
        k = i % ROLLED_PICTURES
        if k == len(pictures):  # the pictures are drawn in order, the first time each is used
            smooth = np.asarray(Image.fromarray(np.roll(base, 3 * k, axis=1)).resize((w, h), Image.Resampling.BICUBIC))
            pictures.append(smooth ^ rng.integers(0, 24, (h, w, 3), dtype=np.uint8))
        return pictures[k], f"{k}/{i}".encode()

    return rolled
