"""The import floor of a flow run: what a new Python process pays before it can run one task.

Every Prefect 3 flow run is a new interpreter: `segops run`, a process worker's
`python -m prefect.engine`, and a served flow's run (`flow.serve`, multiprocessing "spawn").
Each imports the libraries its tasks use: Prefect, MLflow and its SQL store, Great
Expectations, DVC, torch and torchvision (with torch._dynamo, which torchvision.ops and the
ONNX export load). This bench times those imports in fresh processes, one library at a time
and all together (what `segops run` imports: `segops.cli.main.FLOW_IMPORTS`, the SQL store and
the flow module), rounds in alternating order, and reports the median wall time of each.

Read it beside `bench/pipeline.py`: a flow run's overhead cannot go below "all of them" on the
same machine, since the same process must import them before its tasks can run.

    python bench/import_floor.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {
    "python (nothing)": "pass",
    "prefect + flows.retrain": "import prefect, flows.retrain",
    "mlflow + SQL store": "import mlflow, mlflow.store.tracking.sqlalchemy_store",
    "great_expectations": "import great_expectations",
    "dvc.repo": "import dvc.repo",
    "torch": "import torch",
    "torch + torchvision": "import torch, torchvision",
    "onnx export stack": "import torch.onnx, onnx, onnxruntime, onnxscript",
}


def all_of_them() -> str:
    """The imports `segops run` makes before (or while) its flow starts."""
    from segops.cli.main import DB_STORE, FLOW_IMPORTS

    names = ["prefect", "flows.retrain", *FLOW_IMPORTS, *DB_STORE]
    return "import " + ", ".join(names)


def timed(code: str) -> float:
    """Wall seconds of a fresh `python -c code` (repository root on the path)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cases = dict(CASES) | {"all of them (segops run)": all_of_them()}
    timed("import torch, mlflow, great_expectations, prefect")  # warm the page cache
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.rounds):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for name in order:
            times[name].append(timed(cases[name]))
    load = os.getloadavg()[0]
    print(f"{args.rounds} rounds, load {load:.1f}, {os.cpu_count()} CPUs")
    print("| imports | median s | min s | max s |\n|---|---|---|---|")
    for name, values in times.items():
        print(
            f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"
        )


if __name__ == "__main__":
    main()
