"""The wheel works outside a source checkout.

Builds the wheel from a copy of the working tree (so no build/ folder lands in the checkout and
a stale one cannot leak old files into the wheel), installs it into a fresh virtual environment
in a temporary folder, and runs the commands a partner or an operator would run, from a folder
that is not the checkout and with nothing of the checkout on sys.path. Dependencies come from
the package index (pip's cache makes a second run quick). About a minute on two cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
EXAMPLES = SCHEMAS / "examples"
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "*.sqlite3"
)
# Variables that would let the installed package see the checkout or a config of the caller's.
SCRUB = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "SWGW_CONFIG", "SWGW_BROKER_URL")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    build_log: str
    venv: Path
    work: Path  # the working directory of every command: outside the checkout
    package: Path  # the installed gateway/ folder in the venv's site-packages

    def run(self, *args: str | Path, expect: int = 0) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in SCRUB}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        result = subprocess.run(
            [str(a) for a in args], cwd=self.work, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == expect, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    def swgw(self, *args: str | Path, expect: int = 0) -> subprocess.CompletedProcess[str]:
        return self.run(self.venv / "bin" / "swgw", *args, expect=expect)

    def python(self, code: str) -> str:
        return self.run(self.venv / "bin" / "python", "-c", code).stdout.strip()


def _call(args: Sequence[str | Path], cwd: Path) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT)
    source = base / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCE)
    log = _call([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", base / "dist", source], base)
    (wheel,) = (base / "dist").glob("swgw-*.whl")
    shutil.rmtree(source)  # from here on, no copy of the source exists outside the wheel
    venv = base / "venv"
    _call([sys.executable, "-m", "venv", venv], base)
    _call([venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check", wheel], base)
    work = base / "work"
    work.mkdir()
    where = "import gateway, pathlib; print(pathlib.Path(gateway.__file__).parent)"
    package = _call([venv / "bin" / "python", "-I", "-c", where], work).strip()
    return Installed(wheel, log, venv, work, Path(package))


def test_the_build_prints_no_license_deprecation(installed: Installed) -> None:
    assert "project.license" not in installed.build_log, installed.build_log
    assert "License classifiers are deprecated" not in installed.build_log
    expression = installed.python("import importlib.metadata as m; print(m.metadata('swgw')['License-Expression'])")
    assert expression == "Apache-2.0"


def test_the_wheel_carries_schemas_and_the_demo_config_exactly_as_in_the_checkout(installed: Installed) -> None:
    """The wheel's copies cannot drift: every file of schemas/ and ops/gateway.toml, byte for byte."""
    with zipfile.ZipFile(installed.wheel) as whl:
        prefix = "gateway/schemas/"
        packaged = {n.removeprefix(prefix): whl.read(n) for n in whl.namelist() if n.startswith(prefix)}
        demo_config = whl.read("gateway/tools/demo.toml")
    folder = {p.relative_to(SCHEMAS).as_posix(): p.read_bytes() for p in SCHEMAS.rglob("*") if p.is_file()}
    assert sorted(packaged) == sorted(folder)
    assert packaged == folder
    assert demo_config == (ROOT / "ops" / "gateway.toml").read_bytes()


def test_the_wheel_carries_the_console_and_the_installed_package_serves_it(installed: Installed) -> None:
    """The ops console's pages are package data: in the wheel byte for byte, read back with importlib.resources."""
    folder = ROOT / "gateway" / "operations" / "console"
    with zipfile.ZipFile(installed.wheel) as whl:
        prefix = "gateway/operations/console/"
        packaged = {n.removeprefix(prefix): whl.read(n) for n in whl.namelist() if n.startswith(prefix)}
    assert packaged == {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert {"index.html", "console.js", "console.css"} <= set(packaged)
    names = installed.python("from gateway.operations.console_api import console_files; print(sorted(console_files()))")
    assert names == str(sorted(packaged))


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    assert installed.package.is_relative_to(installed.venv)
    assert installed.python("from gateway.intake.validation import MESSAGE_SET; print(MESSAGE_SET)") == str(
        installed.package / "schemas"
    )


def test_check_config_and_validate_on_the_example_config_and_messages(installed: Installed) -> None:
    """An operator's own copy of the example config and message set, next to each other as in the checkout."""
    shutil.copytree(SCHEMAS, installed.work / "schemas", dirs_exist_ok=True)
    (installed.work / "ops").mkdir(exist_ok=True)
    shutil.copy(ROOT / "ops" / "gateway.toml", installed.work / "ops" / "gateway.toml")
    out = installed.swgw("check-config", "--config", "ops/gateway.toml").stdout
    assert re.search(r"gateway\.toml: ok \(6 partners, 7 message types, 3 destinations, 4 routes\)", out), out

    valid = sorted(EXAMPLES.glob("*/valid/*.xml"))
    folders = [p.relative_to(ROOT) for p in sorted(EXAMPLES.glob("*/valid"))]  # relative: to the copy in work/
    result = installed.swgw("validate", "--config", "ops/gateway.toml", *folders)
    assert result.stdout.count(": ok (") == len(valid), result.stdout
    assert f"{len(valid)} valid, 0 invalid" in result.stderr

    invalid = sorted(EXAMPLES.glob("*/invalid/*.xml"))
    result = installed.swgw("validate", "--config", "ops/gateway.toml", "schemas/examples/CUSDEC/invalid", expect=1)
    assert result.stdout.count(": INVALID (") == len(list((EXAMPLES / "CUSDEC" / "invalid").glob("*.xml")))
    result = installed.swgw("validate", "--json", "--config", "ops/gateway.toml", "schemas/examples", expect=1)
    assert f"{len(valid)} valid, {len(invalid)} invalid" in result.stderr


def test_the_packaged_demo_config_and_examples_work_on_their_own(installed: Installed) -> None:
    """`swgw demo` needs nothing but the wheel: its config and every example message ship in it."""
    config = installed.python("from gateway.tools.demo import DEMO_CONFIG; print(DEMO_CONFIG)")
    assert config == str(installed.package / "tools" / "demo.toml")
    out = installed.swgw("check-config", "--config", config).stdout
    assert f"{config}: ok (6 partners, 7 message types" in out
    examples = installed.package / "schemas" / "examples"
    result = installed.swgw("validate", "--config", config, examples, expect=1)
    valid, invalid = len(list(EXAMPLES.glob("*/valid/*.xml"))), len(list(EXAMPLES.glob("*/invalid/*.xml")))
    assert f"{valid} valid, {invalid} invalid" in result.stderr
    assert str(ROOT) not in result.stdout + result.stderr
    assert "usage: swgw demo" in installed.swgw("demo", "--help").stdout


def test_schema_docs_check_simulate_and_status(installed: Installed) -> None:
    out = installed.swgw("schema-docs", "--check").stdout
    assert f"{installed.package / 'schemas' / 'README.md'} is up to date" in out
    assert "usage: swgw simulate" in installed.swgw("simulate", "--help").stdout
    assert "usage: swgw status" in installed.swgw("status", "--help").stdout
    assert "check-config" in installed.swgw("--help").stdout
