"""The PNGs of ``featx inspect``: contact sheets, budget curve, reliability diagram, map.

Contact sheets are the only place images are decoded; a file that is gone
or unreadable becomes a grey placeholder; an empty sheet is a framed panel saying so.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..errors import FeatxError
from ..metrics import _pyplot

THUMB = 128
_SPLIT_MARKERS = {"train": "o", "val": "s", "test": "^", "": "x"}


def thumbnail(path: str, size: int = THUMB) -> np.ndarray | None:
    """The image at ``path`` fitted in ``size`` x ``size`` (aspect kept), or None if it cannot be read."""
    from PIL import Image

    from ..decode import read_image

    try:
        with Image.open(path) as im:
            w, h = im.size
        scale = size / max(w, h, 1)
        return read_image(path, (max(1, round(h * scale)), max(1, round(w * scale))))
    except (FeatxError, OSError, ValueError):
        return None


def _tail(path: str, parts: int = 3) -> str:
    return "/".join(Path(path).parts[-parts:])


@functools.lru_cache(maxsize=4)
def _font(size: int = 10):
    """DejaVu Sans from matplotlib's own fonts (a dependency), else Pillow's bitmap font.

    Pillow's default scalable font (Aileron) draws a space 2 px wide at this
    size, so captions read as one word ("labelsdiffer").
    """
    from PIL import ImageFont

    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default_imagefont()


def _fit(text: str, width: float, font) -> str:
    """``text``, or its end after "..." when it is wider than ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    for cut in range(1, len(text)):
        short = "..." + text[cut:]
        if font.getlength(short) <= width:
            return short
    return "..."


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def pair_caption(p: dict, side: str) -> list[str]:
    """The caption lines under one image of a duplicate pair (``side`` "a" or "b")."""
    lines = [_tail(p[f"path_{side}"]), f"{p[f'split_{side}'] or 'no split'}, label {p[f'label_{side}'] or 'none'}"]
    if side == "a":
        if p["kind"] == "exact":
            how = "identical bytes"
        elif p.get("rule") == "neighbourhood":
            how = f"cosine {p['similarity']:.3f}, nearest neighbours"
        else:
            how = f"cosine {p['similarity']:.3f}"
        lines.append(f"{how}, {p['cross_split']}" if p["cross_split"] else how)
    else:
        lines.append("labels differ" if p["label_conflict"] else "same label" if p[f"label_{side}"] else "")
    return lines


def _cell(path: str, lines: list[str], width: int = 2 * THUMB, line_px: int = 13):
    """A thumbnail centred over up to three lines of caption (a grey placeholder if unreadable)."""
    from PIL import Image, ImageDraw

    cell = Image.new("RGB", (width, THUMB + 4 + line_px * 3), "white")
    draw = ImageDraw.Draw(cell)
    font = _font()
    img = thumbnail(path)
    if img is None:
        cell.paste((170, 170, 170), ((width - THUMB) // 2, 0, (width + THUMB) // 2, THUMB))
        draw.text((width // 2, THUMB // 2), "cannot read image", fill="white", font=font, anchor="mm")
    else:
        thumb = Image.fromarray(img)
        cell.paste(thumb, ((width - thumb.width) // 2, (THUMB - thumb.height) // 2))
    for k, line in enumerate(lines[:3]):
        draw.text((2, THUMB + 2 + k * line_px), _fit(line, width - 4, font), fill="black", font=font)
    return cell


def _panel(lines: list[str], width: int = 4 * THUMB, height: int = THUMB):
    """A framed white panel with centred text: what a sheet shows when it has nothing to show."""
    from PIL import Image, ImageDraw

    panel = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(panel)
    draw.rectangle((0, 0, width - 1, height - 1), outline=(120, 120, 120))
    top = height // 2 - 9 * len(lines)
    for k, line in enumerate(lines):
        draw.text((width // 2, top + 18 * k + 9), _fit(line, width - 8, _font(12 if k == 0 else 10)),
                  fill="black" if k == 0 else (90, 90, 90), font=_font(12 if k == 0 else 10), anchor="mm")
    return panel


def _sheet(cells: list, columns: int, path: Path, title: str) -> Path:
    """Cells pasted on a grid under a title line, saved as PNG."""
    from PIL import Image, ImageDraw

    w, h = cells[0].size
    rows = -(-len(cells) // columns)
    sheet = Image.new("RGB", (columns * (w + 6), 20 + rows * (h + 6)), "white")
    ImageDraw.Draw(sheet).text((4, 4), title, fill="black", font=_font(11))
    for k, cell in enumerate(cells):
        sheet.paste(cell, ((k % columns) * (w + 6), 20 + (k // columns) * (h + 6)))
    sheet.save(path)
    return Path(path)


NO_PAIRS = "no duplicate pairs"
NO_SUSPECTS = "no likely label errors"


def pair_sheet(pairs: list[dict], path: Path, title: str, empty_note: str = "") -> Path:
    """One row per pair: the two images side by side, with split, label and similarity.

    Without pairs, a panel saying so (and ``empty_note``: what was searched).
    """
    if not pairs:
        return _sheet([_panel([NO_PAIRS] + ([empty_note] if empty_note else []))], 1, path, title)
    cells = [_cell(p[f"path_{side}"], pair_caption(p, side)) for p in pairs for side in "ab"]
    return _sheet(cells, 2, path, title)


def suspect_caption(s: dict) -> list[str]:
    return [_tail(s["path"], 2), f"{s['split'] or 'no split'}: {s['given']} -> {s['suggested']}",
            f"score {s['score']:.3f}"]


def suspect_sheet(suspects: list[dict], path: Path, title: str, columns: int = 4) -> Path:
    """A grid of suspected label errors: given -> suggested label, score."""
    if not suspects:
        return _sheet([_panel([NO_SUSPECTS])], 1, path, title)
    cells = [_cell(s["path"], suspect_caption(s), width=int(1.5 * THUMB)) for s in suspects]
    return _sheet(cells, columns, path, title)


def _save(fig, plt, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def budget_plot(budget: dict, path: Path) -> Path:
    """Accuracy against labelled images per class (log axis), mean with the min-max spread of the seeds."""
    plt = _pyplot()
    pts = budget["points"]
    x = np.array([p["per_class"] for p in pts], float)
    mean = np.array([p["mean"] for p in pts])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.fill_between(x, [p["min"] for p in pts], [p["max"] for p in pts], alpha=0.25, label="min-max over seeds")
    ax.plot(x, mean, marker="o", label="mean accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel(f"accuracy on {budget['evaluated_on']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, plt, path, "label budget (logistic regression on cached features)")


def reliability_plot(proba: np.ndarray, after: np.ndarray, y: np.ndarray, section: dict, path: Path) -> Path:
    """Accuracy per confidence bin against the diagonal, before and after temperature scaling."""
    from ..calibration import reliability_bins

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for p, label, style in ((proba, f"as is (ECE {section['ece']:.3f})", "o-"),
                            (after, f"T={section['temperature']:.2f} (ECE {section['ece_after']:.3f})", "s-")):
        b = reliability_bins(p, y, section["bins"])
        used = b["count"] > 0
        ax.plot(b["confidence"][used], b["accuracy"][used], style, ms=4, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, plt, path, f"reliability: {section['source']}\non {section['evaluated_on']} (n={section['n']})")


def map_plot(coords: np.ndarray, f, chosen: np.ndarray, flagged: np.ndarray, method: str, path: Path) -> Path:
    """Points coloured by class, marker by split; flagged images (duplicates, suspects) ringed in black."""
    plt = _pyplot()
    names = f.class_names
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20" if len(names) <= 20 else "hsv")
    fig, ax = plt.subplots(figsize=(7, 6))
    y, split = f.y[chosen], f.split[chosen]
    size = max(3.0, min(30.0, 3000.0 / max(len(chosen), 1)))
    for s, marker in _SPLIT_MARKERS.items():
        for c in np.unique(y[split == s]):
            m = (split == s) & (y == c)
            color = "lightgrey" if c < 0 else cmap(c / max(len(names) - 1, 1) if len(names) > 20 else c)
            label = (names[c] if c >= 0 else "unlabeled") if s in ("train", "") else None
            ax.scatter(coords[m, 0], coords[m, 1], s=size, marker=marker, color=color, label=label, alpha=0.7,
                       linewidths=0)
    ring = np.isin(chosen, flagged)
    if ring.any():
        ax.scatter(coords[ring, 0], coords[ring, 1], s=size * 4, facecolors="none", edgecolors="black",
                   linewidths=0.8, label="flagged")
    present = [s or "unlabeled" for s in _SPLIT_MARKERS if (split == s).any()]
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    if len(names) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    splits = ", ".join(f"{s}={_SPLIT_MARKERS['' if s == 'unlabeled' else s]}" for s in present)
    return _save(fig, plt, path, f"{method} map of {len(chosen)} images ({splits})")


__all__ = ["pair_sheet", "pair_caption", "suspect_sheet", "suspect_caption", "budget_plot", "reliability_plot", "map_plot", "thumbnail"]
