"""What pyproject promises is what the tests run with: every floor of the onnx extra is the version that
constraints.txt pins, so `make test` (and CI) tests exactly the floors."""

import re

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

from .conftest import ROOT  # noqa: E402


def test_the_onnx_extras_floors_are_the_tested_pins():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["onnx"]
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    pins = {name.lower().replace("_", "-"): version for name, version in pins.items()}
    for requirement in extras:
        name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement).groups()
        assert pins[name.lower()] == floor, f"{name}: floor {floor}, tested {pins[name.lower()]}"
