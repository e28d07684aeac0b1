"""Classification metrics, their text report, and the PNG plots."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str], top_k: int = 5) -> dict:
    """Accuracy, top-k accuracy, macro-F1, per-class precision/recall and the confusion matrix.

    ``y_true`` holds indices into ``class_names``; ``proba`` has one column per class.
    """
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    y_true = np.asarray(y_true)
    n_classes = len(class_names)
    pred = np.argmax(proba, axis=1)
    labels = np.arange(n_classes)
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    out = {"n": int(len(y_true)), "accuracy": float((pred == y_true).mean()) if len(y_true) else float("nan")}
    k = min(top_k, n_classes - 1)  # top-k with k >= classes is always 1
    if k >= 2:
        topk = np.argsort(-proba, axis=1)[:, :k]
        out[f"top{k}_accuracy"] = float((topk == y_true[:, None]).any(axis=1).mean()) if len(y_true) else float("nan")
    return {
        **out,
        "macro_f1": float(f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(class_names)
        },
        "confusion": confusion_matrix(y_true, pred, labels=labels).tolist(),
    }


def format_report(by_split: dict[str, dict], class_names: Sequence[str], fit_seconds: float | None = None) -> str:
    """A compact text report: one line per split, then per-class figures of the last split."""
    lines = []
    for split, m in by_split.items():
        topk = next((k for k in m if k.startswith("top")), None)
        top = f"{topk.replace('_', ' ')} {m[topk]:.4f}  " if topk else ""
        n = f"n={m['n']:,} sampled of {m['sampled_from']:,}" if m.get("sampled_from") else f"n={m['n']}"
        lines.append(f"{split:>5}: accuracy {m['accuracy']:.4f}  {top}macro-F1 {m['macro_f1']:.4f}  ({n})")
    if fit_seconds is not None:
        lines.append(f"fit time: {fit_seconds:.2f}s")
    last_split, last = list(by_split.items())[-1]
    if len(class_names) <= 30:
        width = max(len(c) for c in class_names)
        lines.append(f"per class ({last_split}):")
        for name in class_names:
            c = last["per_class"][name]
            lines.append(f"  {name:<{width}}  precision {c['precision']:.3f}  recall {c['recall']:.3f}  n={c['support']}")
        lines.append(f"confusion matrix ({last_split}; rows true, columns predicted):")
        cm = np.array(last["confusion"])
        cw = max(4, len(str(cm.max())) + 1)
        lines.append("  " + " " * width + "".join(f"{i:>{cw}}" for i in range(len(class_names))))
        for i, name in enumerate(class_names):
            lines.append(f"  {name:<{width}}" + "".join(f"{v:>{cw}}" for v in cm[i]) + f"   [{i}]")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _quiet_plot(plot):
    """Matplotlib's UserWarnings (a class name's glyph missing from the font,
    a layout it cannot tighten) describe a cosmetic flaw of a PNG, not a
    problem of the run: they stay out of the terminal. Plots are drawn on
    the main thread after training, so swapping the filters here is safe."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return plot(*args, **kwargs)

    return wrapper


@_quiet_plot
def plot_confusion(confusion, class_names: Sequence[str], path: str | os.PathLike, title: str) -> Path:
    plt = _pyplot()
    cm = np.asarray(confusion)
    n = len(class_names)
    size = min(14, 2.5 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


@_quiet_plot
def plot_curves(history: dict, path: str | os.PathLike, title: str, best_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch, train and validation, side by side.

    Epochs are whole numbers on the axis. ``best_epoch`` (1-based) marks
    the epoch whose weights were kept; 0 says the starting weights were
    kept (no epoch beat them), drawn at epoch 0.
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=label)
        if best_epoch is not None:
            kept = "starting weights kept" if best_epoch == 0 else f"restored: epoch {best_epoch}"
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1, label=kept)
            values = history.get("val_" + key)
            if values and 1 <= best_epoch <= len(values):
                ax.plot([best_epoch], [values[best_epoch - 1]], marker="*", ms=12, color="tab:green", ls="none")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
