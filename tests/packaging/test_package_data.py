"""What the package reads at run time is package data, and in a checkout it is the folders themselves.

The wheel gets a copy of schemas/ and ops/gateway.toml at build time through two symlinks
(gateway/schemas, gateway/tools/demo.toml). Were either replaced by a copied folder or file,
the two would drift; were code to compute a checkout path again, the installed package would
look for a folder that is not there. test_wheel.py checks the built wheel itself.
"""

from __future__ import annotations

import ast
import os
import tomllib
from pathlib import Path

from gateway.intake.validation import ENVELOPE_XSD, MESSAGE_SET
from gateway.tools.demo import DEMO_CONFIG, EXAMPLES
from gateway.tools.schemadoc import README, SCHEMAS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateway"
LINKS = {"schemas": "../schemas", "tools/demo.toml": "../../ops/gateway.toml"}


def test_package_data_are_links_to_the_folders_partners_and_ops_use() -> None:
    for name, target in LINKS.items():
        link = PACKAGE / name
        assert link.is_symlink(), f"gateway/{name} must stay a symlink to {target}, not a copy that can drift"
        assert os.readlink(link) == target  # relative, so any checkout (and the Docker build) resolves it
        assert link.resolve() == (link.parent / target).resolve()


def test_pyproject_ships_them() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = ["schemas/**/*", "tools/demo.toml", "operations/console/*"]
    assert config["tool"]["setuptools"]["package-data"]["gateway"] == shipped
    assert config["project"]["license"] == "Apache-2.0"  # SPDX string: no deprecation warning at install


def test_in_a_checkout_the_package_reads_the_folders_themselves() -> None:
    assert MESSAGE_SET == SCHEMAS == ROOT / "schemas"
    assert ENVELOPE_XSD == ROOT / "schemas" / "envelope" / "envelope-1.xsd"
    assert EXAMPLES == ROOT / "schemas" / "examples"
    assert README == ROOT / "schemas" / "README.md"
    assert DEMO_CONFIG == ROOT / "ops" / "gateway.toml"


def test_no_module_computes_a_path_from_its_own_file() -> None:
    """`Path(__file__).parents[2] / "schemas"` is how the package once read a checkout's folder."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(node, ast.Name) and node.id == "__file__" for node in ast.walk(tree)):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"read package data with importlib.resources (validation.packaged) instead: {offenders}"
