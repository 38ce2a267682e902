"""`pip install .` installs the inference side alone: the wheel holds the dtdysv modules pyproject.toml lists and no
top-level name of the checkout, and a copy installed elsewhere, away from the checkout, imports the API and scores
an export with the `dtdysv-score` command."""

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import export
from dtdysv.api import SpeakerVerifier
from test_export import SMALL, small_model

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def builds_wheels_offline() -> bool:
    """Whether this environment's setuptools builds a wheel without downloading anything (70.1 has bdist_wheel)."""
    try:
        major, minor = (int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel's file names, the folder the wheel was installed into with `pip install --target`)."""
    if not builds_wheels_offline():
        pytest.skip("building the wheel offline needs setuptools >= 70.1 (requirements.txt; `make venv`)")
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # what the build reads, copied, so that nothing is built inside the checkout
    shutil.copytree(ROOT / "dtdysv", source / "dtdysv", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(root / "dist")],
                   check=True, cwd=root)
    (wheel,) = (root / "dist").glob("dtdysv-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)], check=True, cwd=root)
    return zipfile.ZipFile(wheel).namelist(), root / "site"


def test_the_wheel_holds_the_listed_dtdysv_modules_only(installed):
    names, _ = installed
    assert {name.split("/")[0] for name in names} == {"dtdysv", "dtdysv-0.1.0.dist-info"}
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"]
    modules = {name.removesuffix(".py").replace("/", ".") for name in names if name.endswith(".py")}
    packages = {".".join(m.split(".")[:i]) + ".__init__" for m in listed for i in range(1, m.count(".") + 1)}
    assert modules == {*listed, *packages}  # the listed modules and the __init__ of their packages
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert entry_points.startswith("dtdysv-0.1.0.dist-info/")


def run_installed(site: Path, cwd: Path, *command: str) -> str:
    """Standard output of ``command`` run in ``cwd`` with the installed copy as the only extra import path."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_installed_copy_scores_an_export_away_from_the_checkout(installed, corpus, tmp_path):
    _, site = installed
    found = run_installed(site, tmp_path, sys.executable, "-c", "import importlib.util, dtdysv.api; "
                          "print(dtdysv.api.__file__); print([m for m in ('config', 'models', 'loss', 'optimizer', "
                          "'scheduler', 'speakerapi', 'SpeakerNet') if importlib.util.find_spec(m)])").splitlines()
    assert found == [str(site / "dtdysv" / "api.py"), "[]"]
    out = tmp_path / "exported"
    export.export_model(small_model("ResNet34_quarter"), out, ("torchscript",), {"embedding_size": SMALL["nOut"]})
    a, b = (str(f) for f in sorted((corpus / "test" / "wav").rglob("*.wav"))[:2])
    line = run_installed(site, tmp_path, str(site / "bin" / "dtdysv-score"), "--model", str(out), "--pairs", a, b)
    score, first, second = line.split()
    assert (first, second) == (a, b)
    assert float(score) == pytest.approx(SpeakerVerifier.from_export(out).score(a, b), abs=1e-5)
