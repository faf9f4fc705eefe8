"""The package metadata: ``pyproject.toml``'s dependency ranges against ``requirements.txt``'s pins.

``requirements.txt`` is the exact, tested set; ``pyproject.toml`` declares the ranges ``pip
install .`` resolves. Whoever changes one must change the other: both must name the same packages
and every pin must lie inside its range.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Requirement]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        pins[canonicalize_name(req.name)] = req
    return pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _ranges() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in _pyproject()["project"]["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def test_every_pin_is_exact():
    for name, req in _pins().items():
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{name}: requirements.txt pins exactly, got {req}"


def test_runtime_requirements_name_the_same_packages():
    pins, ranges = _pins(), _ranges()
    assert sorted(ranges) == sorted(pins), (
        f"only in requirements.txt: {sorted(set(pins) - set(ranges))}; "
        f"only in pyproject.toml: {sorted(set(ranges) - set(pins))}")


def test_every_pin_satisfies_its_range():
    pins, ranges = _pins(), _ranges()
    for name in sorted(set(pins) & set(ranges)):
        version = next(iter(pins[name].specifier)).version
        assert ranges[name].specifier.contains(version, prereleases=True), (
            f"{name}=={version} (requirements.txt) is outside {ranges[name].specifier} (pyproject.toml)")


def test_every_range_has_a_lower_bound():
    for name, req in _ranges().items():
        assert any(s.operator in (">=", "~=", "==") for s in req.specifier), f"{name}: no lower bound in {req}"


def test_license_is_declared_and_shipped():
    project = _pyproject()["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the osteo_tf authors" in text


@pytest.mark.parametrize("version", ["3.11"])
def test_requires_python_admits_the_tested_interpreter(version):
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(_pyproject()["project"]["requires-python"]).contains(version + ".0")


def test_version_comes_from_the_package():
    pyproject = _pyproject()
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "osteo_tf.__version__"}
