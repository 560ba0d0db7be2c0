"""The front door and the docs site: README within 250 lines and linking every docs page, and the site
builds with `mkdocs build --strict` (no broken link or anchor, no page left out of the navigation)."""

import importlib.util
import re
import subprocess
import sys

import pytest
import yaml

from .conftest import ROOT


def test_readme_is_a_front_door_that_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "make test" in readme and "make train" in readme
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "index.md":
            assert f"docs/{page.name}" in readme, f"README does not link docs/{page.name}"
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link


def test_docs_are_written_as_documentation_not_a_diary():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            assert not re.search(r"(^|[.;:] )I |\bI (ran|measured|tried|found|reran|built)\b", line), (
                f"{page.name}:{number}: first person: {line}"
            )


def test_mkdocs_build_strict_passes(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:  # the build runs as `sys.executable -m mkdocs`
        pytest.skip("mkdocs is not installed (make install installs it)")
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = {next(iter(item.values())) for item in nav}
    assert listed == {p.name for p in (ROOT / "docs").glob("*.md")}, "a docs page is missing from mkdocs.yml's nav"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "quality" / "index.html").is_file()
