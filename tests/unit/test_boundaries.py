"""House rule 1: the API never imports workers/ or torch; only workers/ imports torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "onnxruntime", "piper", "numpy")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_api_core_db_never_import_workers_or_inference_libraries() -> None:
    for pkg in ("api", "core", "db"):
        for path in (ROOT / pkg).rglob("*.py"):
            bad = {n for n in _imports(path) if n.split(".")[0] in ("workers", *HEAVY)}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_only_workers_import_torch() -> None:
    for pkg in ("api", "core", "db", "tasks", "cli"):
        for path in (ROOT / pkg).rglob("*.py"):
            bad = {n for n in _imports(path) if n.split(".")[0] in ("torch", "onnxruntime")}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_loading_the_api_app_loads_no_worker_code() -> None:
    code = (
        "import sys, api.main\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('workers', 'torch', 'onnxruntime', 'piper', 'tasks.synthesize')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
