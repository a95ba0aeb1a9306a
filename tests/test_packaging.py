"""platform/'s layout as packaged: every subpackage is named in pyproject.toml (platform/ has no __init__.py, so
setuptools finds none by itself and a wheel would silently leave a new one out), and few modules stay at its top."""

from __future__ import annotations

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
