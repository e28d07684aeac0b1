"""What ``featx inspect`` found: the report object, its JSON and its printed summary."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..features import Features
from .limits import LEAKY


@dataclass
class InspectReport:
    """What ``featx.inspect`` found; ``to_dict()`` is what ``report.json`` holds.

    Attributes
    ----------
    directory : Path or None
        Where the files were written (None with ``out=False``).
    features : str
        The features inspected, in words.
    duplicates : dict
        ``exact_pairs`` and ``near_pairs`` (records with paths, splits, labels,
        similarity), ``cross_split`` counts, ``threshold``, ``method``.
    label_issues, budget, calibration : dict or None
        None when the data is unlabeled (see ``notes``).
    embedding : dict
    notes : list of str
    timings, cpu_seconds : dict
        Wall and CPU seconds of this process per section (on shared cores
        the CPU seconds are what the section would take on an idle machine).
    files : list of Path
    """

    directory: Path | None
    features: str
    n_images: int
    class_names: list[str]
    splits: dict[str, int]
    duplicates: dict
    label_issues: dict | None = None
    budget: dict | None = None
    calibration: dict | None = None
    embedding: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    suspect_ranking: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return jsonable({
            "features": self.features, "n_images": self.n_images, "class_names": self.class_names,
            "splits": self.splits, "duplicates": self.duplicates, "label_issues": self.label_issues,
            "budget": self.budget, "calibration": self.calibration, "embedding": self.embedding,
            "notes": self.notes, "timings": self.timings, "cpu_seconds": self.cpu_seconds, "files": [p.name for p in self.files],
        })

    def summary(self, shown: int = 5) -> str:
        """The text ``featx inspect`` prints."""
        d = self.duplicates
        lines = [f"features: {self.features}"]
        if d["adaptive"]:
            near = (f"{len(d['near_pairs'])} near pairs ({d['by_rule']['cosine']} at cosine >= {d['threshold']:g}, "
                    f"{d['by_rule']['neighbourhood']} mutual nearest neighbours far nearer than the next; "
                    f"{d['method']})")
        else:
            near = f"{len(d['near_pairs'])} near pairs at cosine >= {d['threshold']:g} ({d['method']})"
        lines.append(f"duplicates: {d['exact_groups']} exact groups ({d['exact_images']} images), {near}")
        for kind in LEAKY + ("val-test",):
            c = d["cross_split"].get(kind)
            if c and (c["exact"] or c["near"]):
                tag = "LEAKAGE " if kind in LEAKY else ""
                lines.append(f"  {tag}{kind}: {c['exact']} exact, {c['near']} near, "
                             f"{c['conflicting_labels']} with conflicting labels")
        pairs = d["exact_pairs"] + d["near_pairs"]
        for p in sorted(pairs, key=lambda p: (p["cross_split"] not in LEAKY, -p["similarity"]))[:shown]:
            same = "==" if p["kind"] == "exact" else f"~{p['similarity']:.3f}"
            lines.append(f"    {p['kind']:<5}  {p['rel_a']} [{p['label_a']}] {same} {p['rel_b']} [{p['label_b']}]")
        li = self.label_issues
        if li:
            lines.append(
                f"label issues: {li['n_flagged']} likely label errors of {li['n_labeled']} labelled images "
                f"(out-of-fold logistic regression, {li['folds']} folds, accuracy {li['oof_accuracy']:.3f}; {li['method']})"
            )
            for s in li["top"][:shown]:
                lines.append(f"    {s['rel']} [{s['split']}]: {s['given']} -> {s['suggested']} (score {s['score']:.3f})")
        b = self.budget
        if b:
            lines.append(f"label budget ({b['evaluated_on']}): {b['verdict']}")
            pts = "  ".join(f"{r['per_class']}{'*' if r['all'] else ''}:{r['mean']:.3f}" for r in b["points"])
            lines.append(f"    per class: accuracy  {pts}   (* = all)")
        c = self.calibration
        if c:
            lines.append(
                f"calibration ({c['source']}, {c['evaluated_on']}, n={c['n']}): ECE {c['ece']:.4f}; "
                f"temperature {c['temperature']:.3g} would give ECE {c['ece_after']:.4f}"
            )
        if self.embedding:
            e = self.embedding
            lines.append(f"map: {e['method']} of {e['points']} images")
        for note in self.notes:
            lines.append(f"note: {note}")
        lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items()))
        return "\n".join(lines)


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def rel_path(f: Features, path: str) -> str:
    src = f.view.source
    return os.path.relpath(path, src) if os.path.isdir(src) and path.startswith(src + os.sep) else path


def label_of(f: Features, i: int) -> str:
    return f.class_names[f.y[i]] if f.y[i] >= 0 else ""
