"""The deployment files pass the linters CI and users run: sam validate --lint, cfn-lint, hadolint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

ROOT = REPO_ROOT
TEMPLATE = ROOT / "template.yaml"
DOCKERFILE = ROOT / "Dockerfile.lambda"


def tool(name: str) -> str:
    """The tool from this interpreter's environment first (where the dev extra installs it), then PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]' provides it)")
    return found


def run(args: list[str]) -> subprocess.CompletedProcess:
    # sam would otherwise phone home and ask about telemetry; region keeps it offline.
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def test_sam_validate_lint() -> None:
    result = run([tool("sam"), "validate", "--lint", "-t", str(TEMPLATE), "--region", "us-east-1"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_cfn_lint() -> None:
    result = run([tool("cfn-lint"), str(TEMPLATE)])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint() -> None:
    result = run([tool("hadolint"), str(DOCKERFILE)])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
