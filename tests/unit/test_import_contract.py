"""The import-linter contract in pyproject.toml holds on this tree and fails on a violation.

``.ci/run`` runs ``lint-imports`` before the tests; here it runs on a scratch copy of the
packages with one planted import per rule, so a contract that stopped checking would show.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO

PACKAGES = ("loopml", "flows", "tasks")

# (module file, planted import, what lint-imports must report)
VIOLATIONS = [
    ("loopml/ledger.py", "import prefect", "loopml.ledger is not allowed to import prefect"),
    ("loopml/gate.py", "import flows.training", "loopml.gate is not allowed to import flows"),
    ("loopml/events.py", "import tasks.ingest", "loopml.events is not allowed to import tasks"),
    (
        "loopml/errors.py",
        "import loopml.cli.common",
        "loopml.errors is not allowed to import loopml.cli",
    ),
    ("tasks/ingest.py", "import flows.scoring", "tasks.ingest -> flows.scoring"),
    ("flows/labels.py", "import loopml.cli.common", "flows.labels -> loopml.cli.common"),
]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with ``root``'s pyproject.toml, importing ``root``'s packages."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def planted_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packages and pyproject.toml with every violation planted."""
    root = tmp_path_factory.mktemp("import-contract")
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("data"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    for relative, statement, _ in VIOLATIONS:
        with open(root / relative, "a", encoding="utf-8") as module:
            module.write(f"\n{statement}  # planted by test_import_contract\n")
    return root


def test_contract_holds_on_this_tree() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_contract_fails_on_each_planted_violation(planted_tree: Path) -> None:
    result = lint_imports(planted_tree)
    assert result.returncode != 0
    for relative, _, report in VIOLATIONS:
        assert report in result.stdout, f"{relative}: expected {report!r} in\n{result.stdout}"
