"""The rooms stay apart: checked on the source, not on promises."""

import ast
import functools
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


# --- function-local imports: only where import cost demands it, and the module says why -----
# docs/development.md "Imports". A module with imports inside functions carries one comment
# line containing LAZY_MARKER that says which light entry point would otherwise pay. An import
# inside a function is refused when it is light: a stdlib module, or a segops module whose own
# import (module level, transitively) loads nothing the importing module does not load already.
LAZY_MARKER = "lazy imports:"
ROOT = PACKAGE.parent
LAZY_ALLOWED: dict[str, str] = {}  # module (or package prefix): why it is not checked yet


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for d in ("segops", "flows") for p in (ROOT / d).rglob("*.py")}


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """What an import statement imports; the most specific name last."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        package = module.split(".")
        if MODULES[module].name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    return [base, *(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)]


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


@functools.cache
def _split_imports(module: str) -> tuple[tuple[str, ...], tuple[tuple[int, str], ...]]:
    """(targets imported at module level, (line, target) imported inside functions); imports
    under `if TYPE_CHECKING:` are neither."""
    top: list[str] = []
    local: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                targets = _targets(child, module)
                if in_function:
                    local.append((child.lineno, targets[-1]))
                else:
                    top.extend(targets)
            in_def = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, in_function or in_def)

    visit(ast.parse(MODULES[module].read_text()), False)
    return tuple(top), tuple(local)


def _ours(name: str) -> bool:
    return name.split(".")[0] in ("segops", "flows")


@functools.cache
def _loads(module: str) -> frozenset[str]:
    """What importing `module` loads besides segops' own code: stdlib modules by full name,
    other packages by top-level name (their cost is in the package's own import)."""
    seen: set[str] = set()
    loads: set[str] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for name in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):  # packages first
            if name in seen or name not in MODULES:
                continue
            seen.add(name)
            for target in _split_imports(name)[0]:
                if _ours(target):
                    todo.append(target)
                else:
                    top = target.split(".")[0]
                    loads.add(target if top in sys.stdlib_module_names else top)
    return frozenset(loads)


def _light(target: str, importer: str) -> bool:
    if target.split(".")[0] in sys.stdlib_module_names:
        return True
    return _ours(target) and target in MODULES and _loads(target) <= _loads(importer)


def _allowed(module: str) -> bool:
    return any(module == key or module.startswith(key + ".") for key in LAZY_ALLOWED)


def test_function_local_imports_only_where_import_cost_demands_it_and_the_module_says_why():
    problems = []
    for module in sorted(m for m in MODULES if not _allowed(m)):
        path, local = MODULES[module].relative_to(ROOT), _split_imports(module)[1]
        marked = LAZY_MARKER in MODULES[module].read_text()
        if local and not marked:
            problems.append(f"{path}: imports inside functions, no '# {LAZY_MARKER} why' line")
        if marked and not local:
            problems.append(f"{path}: a '{LAZY_MARKER}' comment but no import inside a function")
        problems += [
            f"{path}:{line}: {target} is light here: import it at module level"
            for line, target in local
            if _light(target, module)
        ]
    assert problems == []


def test_the_lazy_import_check_sees_what_it_refuses():
    """The scan above finds function-local imports and tells light ones from heavy ones."""
    local = dict(_split_imports("segops.validation")[1])
    assert "great_expectations" in {t.split(".")[0] for t in local.values()}
    assert not any(_light(t, "segops.validation") for t in local.values())
    assert _light("json", "segops.validation")
    assert _light("segops.errors", "segops.validation")
    assert not _light("segops.train.run", "segops.train.precheck")  # torch
    assert not _light("segops.stack", "segops.cli.stack")  # urllib.request, ssl: --help pays
