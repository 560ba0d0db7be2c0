"""Print pip constraints that pin every dependency hf_spam declares to its floor in pyproject.toml, for
`make test-floors`: the suite run against the oldest versions pyproject promises to work with.

A declared `>=X` (or `>=X,<Y`) becomes `==X`, an `==X` stays; a dependency with no floor gets the tested
version in constraints.txt. torch is the exception: `--torch` (default: constraints.txt's, the CPU build on
these machines), since the registry's older torch releases for Linux are CUDA builds of several GB.
Transitive dependencies are left to the resolver: they are the libraries' promises, not hf_spam's."""

import argparse
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def tested_versions() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[normalized(name)] = version.strip()
    return pins


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floor_pins(extras: list[str], torch: str | None) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    tested = tested_versions()
    pins = {}
    for requirement in requirements:
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", requirement.strip())
        name, spec = normalized(match.group(1)), match.group(3)
        floor = re.search(r"(?:>=|==)\s*([0-9][^,;\s]*)", spec)
        pins[name] = floor.group(1) if floor else tested[name]
    pins["torch"] = torch or tested["torch"]
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", required=True, help="The extras installed, comma-separated (Makefile's EXTRAS).")
    parser.add_argument("--torch", help="The torch version to test with (default: constraints.txt's).")
    args = parser.parse_args()
    print("\n".join(floor_pins(args.extras.split(","), args.torch)))
    sys.exit(0)
