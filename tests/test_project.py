"""The project's own files agree with each other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_packages() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {_name(r) for r in reqs} - {"hp-mini"}


def _environment_packages() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {_name(r) for r in pip if not r.startswith("-")}


def test_environment_yml_and_pyproject_name_the_same_packages():
    in_pyproject, in_env = _pyproject_packages(), _environment_packages()
    assert in_pyproject == in_env, (
        f"only in pyproject.toml: {sorted(in_pyproject - in_env)}; "
        f"only in environment.yml: {sorted(in_env - in_pyproject)}"
    )


def test_pinned_versions_agree_with_the_constraints():
    pins = dict(
        line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line and not line.startswith("#")
    )
    env = (ROOT / "environment.yml").read_text()
    for name, version in pins.items():
        assert f"{name}=={version}" in env, f"environment.yml should pin {name}=={version} as constraints.txt does"


def test_readme_gives_the_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make book" in readme
    assert "make test" in ci and "make book" in ci


def test_every_toc_entry_exists():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    missing = [f for f in files if not (ROOT / f"{f}.md").exists()]
    assert not missing, f"_toc.yml names chapters that do not exist: {missing}"
