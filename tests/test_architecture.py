"""The package's layers, checked statically by import-linter with the contracts in pyproject.toml.

The runtime (``alexnet_deploy.deploy``) must stay installable and importable on a device without
torch, and lower layers must never reach up into higher ones; docs/architecture.md draws the
layers. A new import that breaks a contract fails here with import-linter's explanation.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if found is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return found


def _run(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_lint_imports(), "--no-cache", str(config)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_are_kept():
    result = _run(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "6 kept, 0 broken" in result.stdout


def test_a_forbidden_import_breaks_the_runtime_contract(tmp_path):
    # The contracts must be able to fail: the same runtime contract, pointed at a package that
    # imports torch, is reported broken.
    package = tmp_path / "fake_runtime"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "deploy.py").write_text("import torch  # noqa: F401\n")
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_package = "fake_runtime"\ninclude_external_packages = true\n\n'
                      '[[tool.importlinter.contracts]]\nname = "runtime without torch"\ntype = "forbidden"\n'
                      'source_modules = ["fake_runtime.deploy"]\nforbidden_modules = ["torch"]\n')
    result = subprocess.run([_lint_imports(), "--no-cache", str(config)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr
