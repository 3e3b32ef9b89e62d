"""The shape of the code: what `pyproject.toml` installs, and no private reach-ins.

The layers themselves are checked by import-linter (`lint-imports`, run by `make test`;
contracts in pyproject.toml) and attribute access to private members by ruff (SLF).
"""

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: ROOT / path for name, path in config["package-dir"].items()}
    found = set()
    for name, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join((name, *parts)))
    assert found == set(config["packages"])


def _private_imports(path: Path, package: str):
    """``from <one of ours> import _name`` of another module's private name."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            ours = node.level > 0 or (node.module or "").split(".")[0] in (
                "daskgmm", "daskgmm_pipelines")
            for alias in node.names:
                if ours and alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name}"


def test_no_module_imports_another_modules_private_names():
    found = []
    for folder, package in ((ROOT / "daskgmm", "daskgmm"), (ROOT / "pipelines", "pipelines")):
        for path in folder.rglob("*.py"):
            found += _private_imports(path, package)
    assert found == []


def test_what_workers_run_imports_neither_the_estimator_nor_its_dependencies():
    """Task functions live in modules that do not pull in scikit-learn or pandas: a Dask
    worker that runs daskgmm's passes and writers stays about 100 MiB lighter."""
    import subprocess
    import sys

    code = (
        "import sys, daskgmm.passes, daskgmm.anomaly, daskgmm.sources, "
        "daskgmm.scores.parquet_format, daskgmm.scores.zarr_format; "
        "print(sorted(m for m in ('sklearn', 'pandas', 'daskgmm.estimator', 'prefect') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
