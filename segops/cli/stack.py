"""`segops stack up|down|status`: the local production stack (PostgreSQL, S3, MLflow and
Prefect servers, workers) on 127.0.0.1 under `.stack/`. `up` prints the `export` lines on
stdout (progress goes to stderr), so `eval "$(segops stack up)"` points this shell at it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

# lazy imports: segops.stack (urllib.request and ssl: tens of ms) loads when a stack command
# runs: `segops --help` imports this module (docs/development.md "Imports").

if TYPE_CHECKING:
    from segops.stack import Settings

stack_app = typer.Typer(
    help="The local production stack (no Docker): servers on 127.0.0.1 under .stack/.",
    no_args_is_help=True,
)

RootOpt = Annotated[
    Path, typer.Option("--root", envvar="SEGOPS_STACK_ROOT", help="the stack's folder")
]


def _port(service: str) -> object:
    return typer.Option(
        f"--{service}-port",
        envvar=f"SEGOPS_STACK_{service.upper()}_PORT",
        help=f"{service} port (default: the last `up`'s, else the built-in default)",
    )


def _settings(root: Path, **ports: int | None) -> Settings:
    from segops.stack import load_settings

    return load_settings(root, **ports)


def _err(text: str) -> None:
    typer.echo(text, err=True)


@stack_app.command("up")
def up(
    root: RootOpt = Path(".stack"),
    postgres_port: Annotated[int | None, _port("postgres")] = None,
    s3_port: Annotated[int | None, _port("s3")] = None,
    mlflow_port: Annotated[int | None, _port("mlflow")] = None,
    prefect_port: Annotated[int | None, _port("prefect")] = None,
    workers: Annotated[int | None, typer.Option(help="Prefect workers to run (default 2)")] = None,
) -> None:
    """Start every service not yet running (idempotent), wait until each is healthy, then
    print the `export` lines that point a shell at the stack."""
    from segops import stack

    s = _settings(
        root,
        pg_port=postgres_port,
        s3_port=s3_port,
        mlflow_port=mlflow_port,
        prefect_port=prefect_port,
        workers=workers,
    )
    for name, state in stack.up(s, on_progress=_err):
        _err(f"{name}: {state}")
    _err(f"logs: {s.root / 'logs'}; stop with `segops stack down`. To use the stack:")
    typer.echo("\n".join(stack.export_lines(s)))


@stack_app.command("status")
def status(root: RootOpt = Path(".stack")) -> None:
    """Each service's health; exit status 1 if any is down."""
    from segops import stack

    rows = stack.status(_settings(root))
    for name, where, ok in rows:
        typer.echo(f"{name:10} {'healthy' if ok else 'down':8} {where}")
    if not all(ok for _, _, ok in rows):
        raise typer.Exit(1)


@stack_app.command("down")
def down(root: RootOpt = Path(".stack")) -> None:
    """Stop every service by PID (PostgreSQL with pg_ctl); data stays under the root."""
    from segops import stack

    stopped = stack.down(_settings(root))
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command("env")
def env(root: RootOpt = Path(".stack")) -> None:
    """Print the `export` lines of the stack (as `up` does), without starting anything."""
    from segops import stack

    typer.echo("\n".join(stack.export_lines(_settings(root))))
