"""CoInfer as a package: pyproject.toml agrees with requirements.txt and the CLIs, `cli.paths` puts the user's files
in the data folder, and an install into a fresh venv answers from any folder without writing into site-packages.

The install test copies the checkout (its build writes build/ and *.egg-info beside the sources), makes a venv
without pip that sees this interpreter's site-packages through a .pth file (torch is not downloaded again), and
installs with this environment's pip and setuptools: `pip install --no-deps --no-build-isolation --no-index`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

import coinfer_cli
from apps import REPO_ROOT
from cli import paths

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
INTERNAL = {"runtime.training", "runtime.linkprobe",  # helpers CoInfer starts itself: no console script
            "bench.corun.sampletrace", "devices.memhog"}  # the sample trace's generator, the testbed's memory hog
SHIPPED = ("apps/*.yml", "devices.yml", "checkpoints/*.pt", "database/coinfer.sqlite", "database/reference/*",
           "compress/_bitpack.c")  # what the code reads from ROOT at run time


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_dependencies_are_requirements_txt() -> None:
    """requirements.txt (what CI installs) is the dependencies plus the dev extra, pins included, and the edge extra
    pins torch as they do."""
    project = PYPROJECT["project"]
    required = [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert sorted(required) == sorted(project["dependencies"] + project["optional-dependencies"]["dev"])
    pins = {_name(r): r for r in project["dependencies"]}
    assert [pins.get(_name(r)) for r in project["optional-dependencies"]["edge"]] == project["optional-dependencies"][
        "edge"]
    assert {_name(r) for r in project["optional-dependencies"]["edge"]} == {"torch", "numpy"}


def _sources() -> list[Path]:
    """The project's .py files: the checkout but tests/, build/ and hidden or dunder folders (.venv, __pycache__)."""
    found = []
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__")) and d not in ("tests", "build")]
        found += [Path(folder, f) for f in files if f.endswith(".py")]
    return found


def _clis() -> set[str]:
    """Every module (a package's __main__ as the package) and root script that runs a `main` under run_cli."""
    return {".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__main__")
            for p in _sources() if "\n    run_cli(main)" in p.read_text()}  # under `if __name__ == "__main__":`


def test_every_cli_has_a_console_script() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    targets = {}
    for name, target in scripts.items():
        module, attr = target.split(":")
        assert module == "coinfer_cli" and name == "coinfer-" + attr.replace("_", "-"), name
        targets[name] = getattr(coinfer_cli, attr).module.removesuffix(".__main__")
    assert sorted(targets.values()) == sorted(_clis() - INTERNAL)
    for module in targets.values():  # each names a module whose main its script runs
        path = REPO_ROOT / (module.replace(".", "/") + ("/__main__.py" if module == "bench.corun" else ".py"))
        assert "def main(" in path.read_text(), module


def test_the_package_list_is_every_package() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in _sources() if p.name == "__init__.py"}
    assert listed == found
    roots = {p.stem for p in _sources() if p.parent == REPO_ROOT} - {"setup"}
    assert set(PYPROJECT["tool"]["setuptools"]["py-modules"]) == roots


def test_paths_in_a_data_folder(tmp_path, monkeypatch) -> None:
    """An installed copy's layout: shipped files in ROOT, the user's in DATA_ROOT."""
    root, data = tmp_path / "site", tmp_path / "data"
    (root / "database").mkdir(parents=True)
    (root / "database" / "db.sqlite").write_bytes(b"shipped")
    (root / "devices.yml").write_text("shipped")
    monkeypatch.setattr(paths, "ROOT", root)
    monkeypatch.setattr(paths, "DATA_ROOT", data)
    assert paths.overlay("devices.yml") == root / "devices.yml"
    assert paths.own(root / "devices.yml") == data / "devices.yml" and paths.own(tmp_path) == tmp_path
    (data).mkdir()
    (data / "devices.yml").write_text("mine")
    assert paths.overlay("devices.yml") == data / "devices.yml"
    seeded = paths.seeded("database/db.sqlite")
    assert seeded == data / "database" / "db.sqlite" and seeded.read_bytes() == b"shipped"
    seeded.write_bytes(b"written")
    assert paths.seeded("database/db.sqlite").read_bytes() == b"written"  # never copied over again
    assert sorted(p.name for p in seeded.parent.iterdir()) == ["db.sqlite"]  # no temporary left
    assert paths.seeded("nothing/here") == data / "nothing" / "here" and not (data / "nothing").exists()


def test_data_root_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "home"))
    assert paths.data_root() == tmp_path / "home"
    monkeypatch.delenv(paths.ENV_HOME)
    assert paths.data_root() == REPO_ROOT  # this is a source tree
    monkeypatch.setattr(paths, "SOURCE_TREE", False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert paths.data_root() == tmp_path / "xdg" / "coinfer"


def _site_dirs() -> list[str]:
    """This interpreter's site-packages folders (never the checkout, which pytest puts on sys.path)."""
    dirs = [*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


def _venv(path: Path) -> tuple[Path, Path]:
    """A venv without pip at `path` that sees this interpreter's packages: (its python, its site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "outer.pth").write_text("\n".join(_site_dirs()) + "\n")
    return python, Path(purelib)


def _source_copy(dest: Path) -> Path:
    skip = shutil.ignore_patterns(".git", ".venv", "tests", "__pycache__", "*.pyc", "build", "*.egg-info", "out",
                                  "_native", "schemes", "*-wal", "*-shm", "*.journal", "*.queue.sqlite",
                                  ".pytest_cache", ".ruff_cache")
    shutil.copytree(REPO_ROOT, dest, ignore=skip)
    return dest


def _listing(folder: Path) -> dict[str, str]:
    """Every file under `folder` but bytecode, with its SHA-256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def _readme_snippet() -> str:
    return re.search(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S).group(1)


CHECK = """
import json, apps, cli.paths, devices.spec
print(json.dumps({"root": str(apps.REPO_ROOT), "data": str(cli.paths.DATA_ROOT), "storage": apps.DEFAULT_STORAGE,
                  "checkpoint": str(apps.load_app("resnet18_digits").checkpoint),
                  "devices": str(devices.spec.DEFAULT_DEVICES), "device_names": sorted(devices.spec.load_devices())}))
"""


@pytest.mark.slow
def test_install_answers_from_any_folder(tmp_path) -> None:
    source = _source_copy(tmp_path / "src")
    python, site_dir = _venv(tmp_path / "venv")
    install = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", paths.ENV_HOME, "VIRTUAL_ENV")}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "XDG_DATA_HOME": str(tmp_path / "xdg"), "OMP_NUM_THREADS": "1"}
    subprocess.run([*install, str(source)], cwd=tmp_path, env=env, check=True, timeout=300)
    installed = _listing(site_dir)
    for pattern in SHIPPED:
        files = sorted(REPO_ROOT.glob(pattern))
        assert files and all(str(f.relative_to(REPO_ROOT)) in installed for f in files), pattern
    work = tmp_path / "work"  # neither the checkout nor the venv
    work.mkdir()

    def run(*argv: str, home: Path | None = None) -> subprocess.CompletedProcess:
        extra = {paths.ENV_HOME: str(home)} if home else {}
        return subprocess.run(argv, cwd=work, env=env | extra, capture_output=True, text=True, timeout=600)

    seen = json.loads(run(str(python), "-c", CHECK).stdout)
    data = tmp_path / "xdg" / "coinfer"
    assert seen["root"] == str(site_dir) and seen["data"] == str(data)
    assert seen["storage"] == f"sqlite:///{data / 'database' / 'coinfer.sqlite'}"
    assert seen["checkpoint"] == str(site_dir / "checkpoints" / "resnet18_digits.pt")
    assert seen["devices"] == str(site_dir / "devices.yml") and seen["device_names"]

    (work / "snippet.py").write_text(_readme_snippet())
    snippet = run(str(python), "snippet.py")  # the default data folder: $XDG_DATA_HOME/coinfer
    assert snippet.returncode == 0, snippet.stderr[-2000:]
    scheme, reason = snippet.stdout.strip().splitlines()[-1].split(" ", 1)
    assert (data / "database" / "coinfer.sqlite").is_file()  # the shipped database, copied on first use

    script = tmp_path / "venv" / "bin" / "coinfer-latency-search"
    helped = run(str(script), "--help")
    assert helped.returncode == 0 and "-accuracy_loss" in helped.stdout
    home = tmp_path / "home"
    answer = run(str(script), "-accuracy_loss", "0.01", "-bandwidth", "1", "--json", home=home)
    assert answer.returncode == 0, answer.stderr[-2000:]
    result = json.loads(answer.stdout)
    p, c, b = (int(v) for v in scheme.split(","))
    assert result["scheme"] == {"p": p, "c": c, "b": b} and result["certified"]  # as the snippet's study says
    assert result["new_evaluations"] == 0 and result["certificate"]["reason"] == reason
    assert result["study_storage"] == str(home / "database" / "coinfer.studies.journal")
    bad = run(str(tmp_path / "venv" / "bin" / "coinfer-show"), "--app", "no_such_app", home=home)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown app") and "Traceback" not in bad.stderr
    assert _listing(site_dir) == installed  # nothing written into site-packages

    editable_python, editable_site = _venv(tmp_path / "venv-e")  # pip install -e: the sources are the root
    subprocess.run([str(editable_python), *install[1:], "-e", str(source)], cwd=tmp_path, env=env, check=True,
                   timeout=300)
    seen = json.loads(run(str(editable_python), "-c", CHECK).stdout)
    assert seen["root"] == seen["data"] == str(source)
    assert seen["storage"] == f"sqlite:///{source / 'database' / 'coinfer.sqlite'}"
