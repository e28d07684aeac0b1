"""What the benchmark scripts share: the real dataset, the offline weights, their options."""

import argparse
import os
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
