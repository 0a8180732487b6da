"""pyproject.toml and environment.yml name the same dependencies with the same pins."""

import pathlib
import re
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
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
