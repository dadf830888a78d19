"""An installed (non-editable) package carries every data file the code reads.

Bundled configs and the web page's static files are read as package
resources; ``pyproject.toml``'s package-data globs decide what a wheel holds.
A file outside them works from a checkout and goes missing once installed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from makevl.config import bundled_config_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "makevl"


def package_data_globs() -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["tool"]["setuptools"]["package-data"]["makevl"]


def test_every_non_python_file_of_the_package_is_package_data():
    shipped = {path for glob in package_data_globs() for path in PACKAGE.glob(glob)}
    data_files = {
        path
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    }
    assert data_files, "the package has no data files: the globs below would pass vacuously"
    missing = sorted(str(p.relative_to(PACKAGE)) for p in data_files - shipped)
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_the_bundled_configs_and_web_files_are_shipped():
    shipped = {
        path.relative_to(PACKAGE).as_posix()
        for glob in package_data_globs()
        for path in PACKAGE.glob(glob)
    }
    assert {f"configs/{name}.yaml" for name in bundled_config_names()} <= shipped
    assert {"demo-tiny", "demo-pretrained", "fashion-mini"} <= set(bundled_config_names())
    assert {"serving/static/index.html", "serving/static/app.js"} <= shipped
