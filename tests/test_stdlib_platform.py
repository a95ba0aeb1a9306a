"""The repo's `platform/` folder (installed as `promptray.platform`) must not shadow the stdlib `platform`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_stdlib_platform_is_not_shadowed_from_repo_root():
    assert _run("import platform; print(platform.system())") == "Linux"


def test_promptray_platform_hub_imports_from_repo_root():
    assert _run("import promptray.platform.model.hub as h; print(sorted(h.BUILTIN_MODELS))") == "['smollm2-135m']"
