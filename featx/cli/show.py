"""How commands print: byte sizes, text tables, library versions, the files extract left out."""

from __future__ import annotations

from collections import defaultdict

import click


def report_ignored(ignored: list[tuple[str, str]]) -> None:
    """One stderr line per reason files were left out, naming the first."""
    by_reason = defaultdict(list)
    for path, reason in ignored:
        by_reason[reason].append(path)
    for reason, paths in by_reason.items():
        n = len(paths)
        if reason == "not an image extension":
            what = f"{n} file{'s' * (n > 1)} that {'are' if n > 1 else 'is'} not an image"
        elif reason.startswith("file not found"):
            click.echo(f"missing: {n} file{'s' * (n > 1)} not found{reason[len('file not found'):]} "
                       f"(first: {paths[0]})", err=True)
            continue
        else:
            what = f"{n} item{'s' * (n > 1)}: {reason}"
        click.echo(f"ignored {what} (first: {paths[0]})", err=True)


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def table(rows: list[list], headers: list[str]) -> str:
    from ..outputs import text_table

    return text_table(rows, headers)


def versions(versions: dict | None) -> str:
    """{"keras": "3.15.1", "tensorflow": "2.21.0", "backend": "tensorflow"} -> "keras 3.15.1, tensorflow 2.21.0"."""
    if not versions:
        return "-"
    shown = [f"{k} {v}" for k, v in versions.items() if k != "backend"]
    backend = versions.get("backend")
    if backend and backend not in versions:
        shown.append(f"backend {backend}")
    return ", ".join(shown) or "-"
