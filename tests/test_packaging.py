"""The package as installed: one top-level package, `mrcom_lightning`, with its datamodules,
callbacks and configs inside (a built wheel, and `mrcom fit` from it outside the repository);
`--config` lookup in the working directory, then among the packaged configs; and
pyproject.toml and environment.yml naming the same dependencies with the same pins."""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import types
import zipfile

import pytest
import yaml

from mrcom_lightning import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
# What the wheel is built from, and where each folder lands inside the installed package.
SOURCES = {"mrcom_lightning": "mrcom_lightning", "datamodules": "mrcom_lightning/datamodules",
           "callbacks": "mrcom_lightning/callbacks", "configs": "mrcom_lightning/configs"}
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


def _name(requirement: str) -> str:
    """The normalised distribution name: lowercase, `_`/`.` as `-`, extras dropped."""
    match = REQUIREMENT.match(requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _by_name(requirements) -> dict[str, str]:
    table = {}
    for requirement in requirements:
        name = _name(requirement)
        assert name not in table, f"{name} is listed twice: {table[name]!r} and {requirement!r}"
        table[name] = re.sub(r"\s+", "", requirement)
    return table


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pip_section(environment: dict) -> list[str]:
    sections = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return [r for r in sections[0] if not r.startswith("-e")]


def test_environment_matches_pyproject():
    project = _pyproject()["project"]
    expected = _by_name(project["dependencies"] + project["optional-dependencies"]["dev"])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    conda_names = {re.split(r"[=<>! ]", d, maxsplit=1)[0] for d in conda}
    assert conda_names <= {"python", "pip"}, f"install these through pip, like pyproject.toml: {conda}"
    actual = _by_name(_pip_section(environment))
    assert actual.keys() == expected.keys(), (
        f"only in pyproject.toml: {sorted(expected.keys() - actual.keys())}; "
        f"only in environment.yml: {sorted(actual.keys() - expected.keys())}"
    )
    for name, requirement in expected.items():
        assert actual[name] == requirement, f"{name}: pyproject.toml {requirement!r}, environment.yml {actual[name]!r}"


def test_environment_python_satisfies_requires_python():
    requires = _pyproject()["project"]["requires-python"]
    minimum = re.fullmatch(r">=\s*3\.(\d+)", requires)
    assert minimum, f"update this test for requires-python = {requires!r}"
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = [d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert len(python) == 1, f"environment.yml should pin python once, got {python}"
    minor = int(re.fullmatch(r"python=3\.(\d+)(\.\*|\.\d+)?", python[0]).group(1))
    assert minor >= int(minimum.group(1)), f"{python[0]} does not satisfy requires-python {requires}"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """(a copy of the sources, the wheel built from it). The copy keeps `build/` and
    `*.egg-info` out of the repository, and stale files of an earlier build out of the wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # No build isolation: setuptools comes from this environment (a dev dependency), no network.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    wheels = list((tmp / "dist").glob("mrcom_lightning-*.whl"))
    assert len(wheels) == 1, f"expected one wheel, got {wheels}"
    return source, wheels[0]


def test_wheel_installs_one_package_with_datamodules_callbacks_and_configs(built):
    source, wheel = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = [n for n in names if n.split("/")[0].endswith(".dist-info")]
        top_level = next(n for n in dist_info if n.endswith("/top_level.txt"))
        assert archive.read(top_level).decode().split() == ["mrcom_lightning"]
    files = set(names) - set(dist_info)
    assert {n.split("/")[0] for n in files} == {"mrcom_lightning"}, sorted(files)
    for name in ("mrcom_lightning/datamodules/__init__.py", "mrcom_lightning/callbacks/__init__.py",
                 "mrcom_lightning/configs/quick.yaml", "mrcom_lightning/configs/baselines/rssm.yaml"):
        assert name in files, f"{name} is not in the wheel"
    # Every module, config and shipped behaviour agent of the sources is installed (pyproject.toml
    # lists the packages and the package data).
    expected = {f"{installed}/{path.relative_to(source / folder).as_posix()}"
                for folder, installed in SOURCES.items()
                for pattern in ("*.py", "*.yaml", "behaviour_agents/*/*") for path in (source / folder).rglob(pattern)}
    missing = sorted(expected - files)
    assert not missing, f"missing from the wheel (list their subpackages in pyproject.toml): {missing}"


def _venv_paths(python: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(site-packages, scripts folder) of the environment of `python`."""
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib')); "
                          "print(sysconfig.get_path('scripts'))"], capture_output=True, text=True, check=True)
    purelib, scripts = out.stdout.splitlines()
    return pathlib.Path(purelib), pathlib.Path(scripts)


@pytest.mark.slow
def test_wheel_fits_the_packaged_quick_config_outside_the_repo(built, tmp_path):
    """A fresh venv sees this environment's third-party packages through a `.pth` file but not
    the editable project (the `.pth` files inside a directory listed that way are not run, so
    the editable finder stays off); the wheel goes in, and `mrcom fit --config configs/quick.yaml`
    runs from a folder with no configs/, on the packaged config."""
    _, wheel = built
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib, scripts = _venv_paths(python)
    # Every site directory this interpreter reads (its own, and any a .pth file added).
    site_dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    (purelib / "current-environment.pth").write_text("\n".join(site_dirs) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"

    def venv_run(*args, **kwargs):
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, **kwargs)

    before = venv_run(str(python), "-c", "import mrcom_lightning", timeout=60)
    assert before.returncode != 0 and "No module named 'mrcom_lightning'" in before.stderr, (
        "the fresh venv already imports mrcom_lightning (is it installed non-editably here?)")
    # --ignore-installed: pip sees this environment's (editable) mrcom-lightning and must neither
    # skip the wheel nor touch it.
    install = venv_run(str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                       str(wheel), timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    where = venv_run(str(python), "-c", "import mrcom_lightning as m, mrcom_lightning.datamodules as d, "
                     "mrcom_lightning.callbacks as c; print(m.__file__, d.__file__, c.__file__, sep='\\n')",
                     timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    assert len(where.stdout.split()) == 3, where.stdout
    for module_file in where.stdout.split():
        assert pathlib.Path(module_file).is_relative_to(purelib), f"{module_file} is not from the venv's {purelib}"

    fit = venv_run(
        str(scripts / "mrcom"), "fit", "--config", "configs/quick.yaml",
        "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--data.dataset.root", str(tmp_path / "data"),
        "--trainer.logger.init_args.tracking_uri", f"sqlite:///{tmp_path / 'mlruns.db'}",
        "--trainer.logger.init_args.artifact_location", str(tmp_path / "artifacts"), timeout=600)
    assert fit.returncode == 0, f"mrcom fit exited {fit.returncode}:\n{fit.stderr[-4000:]}"
    assert (tmp_path / "runs" / "checkpoints" / "last.ckpt").is_file(), sorted(map(str, tmp_path.rglob("*.ckpt")))
    assert "Traceback" not in fit.stderr, fit.stderr[-4000:]


PACKAGED = ROOT / "configs"  # what `mrcom_lightning.configs` holds, in an editable install or a wheel


def test_config_in_the_working_directory_wins(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "quick.yaml").write_text("seed_everything: 1\n")
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--config", "configs/quick.yaml", "--config=configs/quick.yaml"]
    assert cli.resolve_configs(argv) == argv


def test_missing_config_falls_back_to_the_packaged_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = cli.resolve_configs(
        ["fit", "--config", "configs/quick.yaml", "--config=configs/baselines/rssm.yaml", "--trainer.max_steps", "3"])
    quick, rssm = pathlib.Path(resolved[2]), pathlib.Path(resolved[3].removeprefix("--config="))
    assert resolved[3].startswith("--config=") and resolved[4:] == ["--trainer.max_steps", "3"]
    assert quick.is_absolute() and quick.read_bytes() == (PACKAGED / "quick.yaml").read_bytes()
    assert rssm.is_absolute() and rssm.read_bytes() == (PACKAGED / "baselines" / "rssm.yaml").read_bytes()


def test_main_resolves_configs_before_dispatch(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setitem(sys.modules, "recording_tool", types.SimpleNamespace(main=seen.append))
    monkeypatch.setitem(cli.TOOLS, "record", ("recording_tool", "main"))
    monkeypatch.chdir(tmp_path)
    cli.main(["record", "--config", "quick.yaml", "--flag", "x"])
    assert len(seen) == 1 and seen[0][0] == "--config" and seen[0][2:] == ["--flag", "x"]
    assert pathlib.Path(seen[0][1]).read_bytes() == (PACKAGED / "quick.yaml").read_bytes()


def test_config_found_nowhere_is_one_line_naming_where_it_looked(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mrcom_lightning.cli", "fit", "--config", "configs/nope.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "configs/nope.yaml" in lines[0] and str(tmp_path.resolve()) in lines[0]
    assert str(PACKAGED) in lines[0] or "mrcom_lightning/configs" in lines[0], lines[0]
