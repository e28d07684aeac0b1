"""The files of a report: CSVs, and the PNGs drawn by :mod:`featx.inspection.plots`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..features import Features
from .limits import DUPLICATE_COLUMNS, LEAKY
from .report import InspectReport


def write_files(report: InspectReport, f: Features, d: Path, coords, chosen, cal) -> list[Path]:
    from . import plots as P

    files = []
    dup = report.duplicates
    pairs = dup["exact_pairs"] + dup["near_pairs"]
    files.append(_write_csv(d / "duplicates.csv", [
        {k: p[k] for k in DUPLICATE_COLUMNS} for p in pairs
    ], list(DUPLICATE_COLUMNS)))
    # Leaks first, then the most similar.
    shown = sorted(pairs, key=lambda p: (p["cross_split"] not in LEAKY, not p["cross_split"], -p["similarity"]))[:16]
    files.append(P.pair_sheet(shown, d / "duplicates.png", f"duplicates ({P._plural(len(pairs), 'pair')}"
                              f"{', 16 shown' if len(pairs) > 16 else ''})",
                              empty_note=f"{report.n_images} images compared: same bytes, cosine >= {dup['threshold']:g}"
                                         + (", or nearest neighbours" if dup["adaptive"] else "")))
    flagged = {p["row_a"] for p in pairs} | {p["row_b"] for p in pairs}
    li = report.label_issues
    if li is not None:
        cols = ["path", "split", "given", "suggested", "score"]
        files.append(_write_csv(d / "label_issues.csv", [{k: s[k] for k in cols} for s in li["suspects"]], cols))
        files.append(P.suspect_sheet(li["suspects"][:24], d / "label_issues.png",
                                     f"likely label errors ({li['n_flagged']}; lowest self-confidence first)"))
        flagged |= {s["row"] for s in li["suspects"]}
    b = report.budget
    if b is not None:
        files.append(_write_csv(d / "label_budget.csv", b["runs"], ["per_class", "seed", "n_train", "accuracy"]))
        files.append(P.budget_plot(b, d / "label_budget.png"))
    if cal is not None:
        files.append(P.reliability_plot(*cal, report.calibration, d / "reliability.png"))
    files.append(P.map_plot(coords, f, chosen, np.array(sorted(flagged), int), report.embedding["method"],
                            d / "embedding.png"))
    return files


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path
