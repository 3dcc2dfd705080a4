"""`segops serve MODEL`: serve a registered model with `mlflow models serve` (in main.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from segops.cli.common import DatasetOpt, ParamsOpt, SetOpt, config, echo

# lazy imports: each command imports its work (torch, MLflow, pandas, ...) when it runs:
# `segops --help` imports this module (docs/development.md "Imports").

MAX_PIXELS_ENV = "SEGOPS_SERVE_MAX_PIXELS"  # read by segops.serving.pyfunc at model load
MAX_SECONDS_ENV = "SEGOPS_SERVE_MAX_SECONDS"  # the time budget (segops.serving.limits)
BUDGET_SHARE = 0.9  # of --timeout: the model stops its work before the server gives up

ModelArg = Annotated[
    str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION (e.g. @champion)")
]


def curl_example(host: str, port: int) -> str:
    """A shell command that sends `image.png` to the server; returns its text."""
    return (
        f"curl -s http://{host}:{port}/invocations -H 'Content-Type: application/json' "
        '-d "{\\"dataframe_records\\": [{\\"image\\": \\"$(base64 -w0 image.png)\\"}]}"'
    )


def serve_command(model_uri: str, host: str, port: int, workers: int, timeout: int) -> list[str]:
    """The `mlflow models serve` command line (this interpreter's mlflow, local env)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",  # the model runs in this environment: no per-model virtualenv to build
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--timeout",
        str(timeout),
    ]


def serve_env(
    tracking_uri: str, max_pixels: int | None, timeout: int | None = None
) -> dict[str, str]:
    """This process's environment plus the store, the pixel limit, the venv on PATH and,
    unless already set, a time budget of 90% of the server's `timeout` (so the prediction
    stops with a clear message before the server answers a bare 504 and leaves it running)."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    # mlflow execs `uvicorn` by name: put this interpreter's bin first even when not activated.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if max_pixels is not None:
        env[MAX_PIXELS_ENV] = str(max_pixels)
    if timeout is not None and not env.get(MAX_SECONDS_ENV):
        env[MAX_SECONDS_ENV] = f"{timeout * BUDGET_SHARE:g}"
    return env


def serve(
    model: ModelArg,
    host: Annotated[
        str, typer.Option(help="interface to bind (0.0.0.0 exposes it to the network)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 5001,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            min=1, help=f"largest image (H*W) accepted; default ${MAX_PIXELS_ENV} or 4096*4096"
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    timeout: Annotated[
        int,
        typer.Option(
            min=1,
            help=f"seconds allowed per request; the model stops its work at 90% of it "
            f"(${MAX_SECONDS_ENV} overrides)",
        ),
    ] = 60,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Serve a registered model over HTTP (POST /invocations) until interrupted.

    Resolves MODEL in the registry first (a missing model fails here, not in the server), then
    replaces this process with `mlflow models serve --env-manager local` on the pinned version,
    so a later promotion does not change what a running server answers: restart it instead.
    """
    from segops import tracking
    from segops.promotion import registry

    store = tracking.connect(config(params, overrides).tracking)
    ref = registry.resolve(model)  # RegistryError (printed without traceback) if absent
    echo(f"serving {ref.uri} ({model}, run {ref.run_id}) on http://{host}:{port}")
    echo(f"try:\n  {curl_example(host, port)}")
    cmd = serve_command(ref.uri, host, port, workers, timeout)
    sys.stdout.flush()
    os.execve(cmd[0], cmd, serve_env(store.tracking_uri, max_pixels, timeout))


def export(
    model: ModelArg,
    out: Annotated[Path, typer.Argument(help="the .onnx file to write")] = Path("model.onnx"),
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="compare onnxruntime with PyTorch on the evaluation split of data.root",
        ),
    ] = True,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    dataset: DatasetOpt = None,
) -> None:
    """Export a registered model to ONNX (input `image`, output `logits`, dynamic batch).

    With --check (default), runs the evaluation split of data.root (or --dataset) through
    onnxruntime and PyTorch and prints the largest logit difference and the mean IoU of both.
    """
    from segops import tracking
    from segops.serving.onnx import check_parity, export_onnx
    from segops.serving.registered import load_registered

    cfg = config(params, overrides, dataset)
    tracking.connect(cfg.tracking)
    trained = load_registered(model, "cpu")
    path = export_onnx(trained, out)
    echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) from {model}")
    if check:
        # The model's own preprocessing and input size, on the data named here.
        data = trained.config.data.model_copy(
            update={"root": cfg.data.root, "format": cfg.data.format}
        )
        parity = check_parity(trained, path, trained.config.model_copy(update={"data": data}))
        echo(
            f"parity on {parity.n_images} {parity.split} images: max |logit diff| "
            f"{parity.max_abs_logit_diff:.3g}, mean IoU {parity.mean_iou_torch:.4f} (PyTorch) vs "
            f"{parity.mean_iou_onnx:.4f} (onnxruntime)"
        )
