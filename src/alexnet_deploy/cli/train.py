"""`alexnet-deploy` commands for the train area."""

from __future__ import annotations

import click

from alexnet_deploy.cli import cli


@cli.command()
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Image folder: DIR/train + DIR/val, or one folder of class sub-folders.")
def train(data: str) -> None:
    """Train AlexNet on an image folder (placeholder until the foundation issue lands)."""
    raise click.UsageError("train is being built")
