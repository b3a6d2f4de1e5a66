"""`alexnet-deploy` commands for the export area."""

from __future__ import annotations

import click

from alexnet_deploy.cli import cli
