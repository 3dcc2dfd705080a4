"""Where the local stack lives and listens: ports and S3 keys, kept in <root>/stack.json so
`status`, `down` and the printed exports agree with the `up` that made it."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path

DEFAULT_PORTS = {"pg_port": 54329, "s3_port": 54330, "prefect_port": 54342, "mlflow_port": 54350}


@dataclass(frozen=True)
class Settings:
    root: Path  # the stack's folder (.stack/ in the project)
    pg_port: int = DEFAULT_PORTS["pg_port"]
    s3_port: int = DEFAULT_PORTS["s3_port"]
    prefect_port: int = DEFAULT_PORTS["prefect_port"]
    mlflow_port: int = DEFAULT_PORTS["mlflow_port"]
    workers: int = 2
    pool: str = "segops-process"  # the pool `segops schedule` deploys to by default
    key: str = ""
    secret: str = ""

    @property
    def project(self) -> Path:
        """The folder the workers run in (the one holding the stack's folder)."""
        return self.root.parent

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    def exports(self) -> dict[str, str]:
        """The variables a shell (or a worker) sets to use this stack."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "PREFECT_API_URL": self.prefect_api,
            "AWS_ENDPOINT_URL": self.s3_url,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "SEGOPS_DVC_REMOTE_URL": "s3://dvc/segops",
        }


def load_settings(root: str | Path, **overrides: int | str | None) -> Settings:
    """The stack's settings: saved ones, then `overrides` that are not None; new S3 keys the
    first time. Saved back (mode 600: it holds the S3 secret)."""
    root = Path(root).resolve()
    saved_file = root / "stack.json"
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = Settings(root=root, **{k: v for k, v in saved.items() if k != "root"})
    settings = replace(settings, **given)
    if not settings.key:
        settings = replace(settings, key="segops", secret=secrets.token_hex(16))
    return settings


def save_settings(settings: Settings) -> None:
    settings.root.mkdir(parents=True, exist_ok=True)
    path = settings.root / "stack.json"
    data = {k: v for k, v in asdict(settings).items() if k != "root"}
    path.touch(mode=0o600)
    path.write_text(json.dumps(data, indent=2) + "\n")
