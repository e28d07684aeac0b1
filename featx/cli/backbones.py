"""`featx backbones`: the backbone registry as a table or JSON."""

from __future__ import annotations

import json

import click

from ..errors import FeatxError
from . import show
from .group import cli


@cli.command()
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON records instead of a table.")
def backbones(pattern, as_json):
    """List the backbones featx can extract with (optionally matching PATTERN, e.g. 'efficient*')."""
    from ..backbones import list_backbones

    found = list_backbones(pattern)
    if as_json:
        click.echo(json.dumps([b.to_dict() for b in found], indent=2))
        return
    if not found:
        from ..backbones import get_backbone

        get_backbone(pattern)  # raises with the closest names
        raise FeatxError(f"No backbone matches {pattern!r}. Run `featx backbones` to list them all.")
    rows = [[b.name, b.input_size, b.feature_width, f"{b.params / 1e6:.1f}M", b.preprocessing] for b in found]
    click.echo(show.table(rows, ["name", "input", "features", "params", "preprocessing"]))
