"""Command-line interface. Each command parses its flags and makes one library call.

The group lives here; the commands live in one module per area (train, export, calibrate,
runtime, device) so that each stays small.

Library modules are imported inside the commands, so `alexnet-deploy bench --help` (and the
runtime commands on a device) never import torch.
"""

from __future__ import annotations

import errno
import logging
import signal
import sys

import click

from alexnet_deploy import __version__
from alexnet_deploy.errors import AlexNetDeployError


class _Group(click.Group):
    """Turns AlexNetDeployError (and, without --debug, any error) into one `Error:` line, exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BaseException:
            if _STOPPED_BY:   # whatever the signal's exception became on its way up (see _stop)
                click.echo(f"Error: {_STOPPED_BY[0]}", err=True)
                sys.exit(_STOPPED_BY[1])
            return self._report(ctx)

    def _report(self, ctx: click.Context):
        """One `Error:` line for the exception being handled."""
        try:
            raise
        except AlexNetDeployError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except Terminated:
            click.echo("Error: terminated (SIGTERM)", err=True)
            sys.exit(143)
        except KeyboardInterrupt:
            click.echo("Error: interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {_os_error_line(exc)}", err=True)
            sys.exit(1)
        except Exception as exc:  # noqa: BLE001 - last line of defence: no tracebacks without --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: unexpected {exc.__class__.__name__}: {exc} (run with --debug for the traceback)",
                       err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="alexnet-deploy")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logging.")
@click.option("-v", "--verbose", is_flag=True, help="Info-level logging.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """AlexNet from PyTorch training to verified inference: train, export, calibrate, bench, deploy."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _os_error_line(exc: OSError) -> str:
    """An OSError that no command turned into its own message: the file, and for a full disk, the fix."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full{where}; free some space and run the command again"
    return f"unexpected {exc.__class__.__name__}: {exc.strerror or exc}{where} (run with --debug for the traceback)"


class Terminated(KeyboardInterrupt):
    """SIGTERM (what timeout, systemd, docker and Slurm send), raised like Ctrl-C so that every
    cleanup path (bundle transactions, partial files, loggers) runs for it too."""


# (message, exit code) once SIGINT or SIGTERM arrived. A C extension that is importing or running
# when the signal's exception is raised may turn it into its own error (pybind11 modules such as
# onnxruntime report any exception during their import as ImportError, which would read "onnxruntime
# is not installed"), so the exit reports the signal, not what it became.
_STOPPED_BY: list = []


def _stop(signum, frame) -> None:
    if signum == signal.SIGTERM:
        _STOPPED_BY[:] = ["terminated (SIGTERM)", 143]
        raise Terminated()
    _STOPPED_BY[:] = ["interrupted", 130]
    raise KeyboardInterrupt()


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    cli(obj={})


# Each area's module adds its commands to the group when imported.
from alexnet_deploy.cli import calibrate, device, export, runtime, train  # noqa: E402,F401
