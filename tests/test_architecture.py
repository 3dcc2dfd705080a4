"""The rooms stay apart: checked on the source, not on promises."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "segops"
MLFLOW_ROOMS = {"tracking", "promotion", "serving"}
SERVERLESS = {"data", "models", "train", "evaluate"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _room(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_segops_never_imports_prefect():
    offenders = [str(p) for p in PACKAGE.rglob("*.py") if "prefect" in _imports(p)]
    assert offenders == []


def test_only_tracking_promotion_and_serving_import_mlflow():
    offenders = [
        str(p)
        for p in PACKAGE.rglob("*.py")
        if "mlflow" in _imports(p) and _room(p) not in MLFLOW_ROOMS
    ]
    assert offenders == []


def test_core_rooms_need_no_server():
    servers = {"mlflow", "prefect", "great_expectations", "dvc"}
    offenders = [
        f"{p}: {sorted(_imports(p) & servers)}"
        for p in PACKAGE.rglob("*.py")
        if _room(p) in SERVERLESS and _imports(p) & servers
    ]
    assert offenders == []


def test_cli_entry_point_imports_nothing_heavy():
    heavy = ["torch", "torchvision", "mlflow", "great_expectations", "prefect", "pandas", "dvc"]
    code = f"import sys, segops.cli.main; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_import_cycles_between_modules_function_local_imports_included():
    import grimp

    graph = grimp.build_graph("segops")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} -> {imported} -> ... -> {module}")
    assert cycles == []
