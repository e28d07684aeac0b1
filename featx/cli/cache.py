"""`featx cache list|rm|compact`: inspect and manage the feature cache."""

from __future__ import annotations

import json
import sys
import time

import click

from ..errors import FeatxError
from . import show
from .group import cli
from .types import cache_dir_option


@cli.group()
def cache():
    """Inspect and manage the feature cache."""


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON records.")
@cache_dir_option
@click.pass_obj
def cache_list(obj, as_json):
    """List cached extractions: backbone, settings, rows, size on disk, versions, datasets.

    Broken extractions (an unreadable meta.json) are listed with the reason;
    `featx cache rm NAME` removes them.
    """
    from ..cache import Cache

    c = Cache(obj["cache_dir"])
    views = c.views()
    records = []
    for e in c.extractions(broken=True):
        if e.error:
            records.append({
                "name": e.name, "backbone": None, "input_size": None, "pooling": None, "cut_blocks": None,
                "weights": None, "precision": None, "rows": None, "shards": len(e.shards()),
                "quarantined": len(e.quarantined()), "bytes": e.size_bytes(),
                "versions": None, "broken": e.error, "datasets": [v.source for v in views if v.extraction == e.name],
                "created": None,
            })
            continue
        s = e.settings
        records.append({
            "name": e.name, "backbone": s.backbone, "input_size": s.input_size, "pooling": s.pooling,
            "cut_blocks": s.cut_blocks, "weights": e.meta.get("weights_source", s.weights), "precision": s.precision,
            "rows": e.rows(), "shards": len(e.shards()), "quarantined": len(e.quarantined()), "bytes": e.size_bytes(),
            "versions": e.meta.get("versions"), "broken": None,
            "datasets": [v.source for v in views if v.extraction == e.name],
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(e.meta.get("created", 0))),
        })
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo(f"No extractions in {c.root}.")
        return
    rows = [[r["name"], r["backbone"], r["input_size"], r["pooling"] + (f" cut{r['cut_blocks']}" if r["cut_blocks"] else ""),
             r["rows"], show.human_bytes(r["bytes"]), show.versions(r["versions"]), ", ".join(r["datasets"]) or "-"]
            for r in records if not r["broken"]]
    rows += [[r["name"], "BROKEN", "-", "-", "-", show.human_bytes(r["bytes"]), "-", r["broken"]] for r in records if r["broken"]]
    click.echo(show.table(rows, ["extraction", "backbone", "size", "pooling", "rows", "disk", "versions", "datasets"]))
    if any(r["broken"] for r in records):
        click.echo("Broken extractions cannot be read; `featx cache rm NAME` removes them.")


@cache.command("rm")
@click.argument("names", nargs=-1)
@click.option("--all", "remove_all", is_flag=True, help="Remove every extraction (broken ones included).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@cache_dir_option
@click.pass_obj
def cache_rm(obj, names, remove_all, yes):
    """Remove extractions (by name or unique prefix) and the dataset views that read them.

    Waits for a run that is extracting into one of them to finish first.
    """
    from ..cache import Cache

    c = Cache(obj["cache_dir"])
    targets = c.extractions(broken=True) if remove_all else [c.get_extraction(n, broken=True) for n in names]
    if not targets:
        raise FeatxError("Name the extractions to remove (see `featx cache list`) or pass --all.")
    if not yes and sys.stdin.isatty():
        click.confirm(f"Remove {len(targets)} extraction(s) from {c.root}?", abort=True)
    for e in targets:
        views = c.remove_extraction(
            e, on_wait=lambda: click.echo(f"waiting for the process extracting into {e.name}...", err=True)
        )
        click.echo(f"removed {e.name} ({len(views)} dataset view(s))")


@cache.command("compact")
@cache_dir_option
@click.pass_obj
def cache_compact(obj):
    """Merge each extraction's shards into one file (safe while others read).

    Unreadable shards are moved aside (shards/.quarantine-*); broken
    extractions are skipped with a warning.
    """
    import warnings

    from ..cache import Cache

    c = Cache(obj["cache_dir"])
    for e in c.extractions(broken=True):
        if e.error:
            click.echo(f"warning: skipping broken extraction {e.name}: {e.error}", err=True)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with e.lock(on_wait=lambda: click.echo(f"waiting for the process extracting into {e.name}...", err=True)):
                merged = e.compact()
        for w in caught:
            click.echo(f"warning: {str(w.message).removeprefix('featx: ')}", err=True)
        click.echo(f"{e.name}: merged {merged} shards" if merged else f"{e.name}: already compact")
