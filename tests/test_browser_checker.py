"""tests/browser/check_pages.py: it finds broken links, images and script errors.

The link and console logic is tested directly; the whole checker runs in headless Chromium
on a tiny site when chromium, chromedriver and selenium are installed (.ci/install_browser.sh).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from helpers import load_check_pages

ROOT = Path(__file__).resolve().parents[1]
check_pages = load_check_pages()

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cf"
    "c0f01f0005000201ad0cd5b50000000049454e44ae426082"
)


def site(tmp_path: Path) -> Path:
    root = tmp_path / "html"
    (root / "book").mkdir(parents=True)
    (root / "_static").mkdir()
    (root / "_static" / "dot.png").write_bytes(PNG)
    (root / "index.html").write_text(
        '<html><body><h1 id="top">Home</h1>'
        '<a href="book/good.html#part">good</a> <a href="book/good.html">good</a>'
        '<a href="https://example.org/x">external</a> <a href="mailto:a@b.c">mail</a>'
        '<img src="_static/dot.png" alt="dot"></body></html>'
    )
    (root / "book" / "good.html").write_text(
        '<html><body><h2 id="part">Part</h2><a href="../index.html#top">home</a>'
        '<a name="old-anchor"></a><a href="#old-anchor">old</a></body></html>'
    )
    (root / "book" / "bad.html").write_text(
        '<html><body><a href="good.html#nowhere">bad anchor</a><a href="missing.html">missing</a>'
        '<img src="../_static/nothing.png" alt="gone">'
        "<script>undefined_function();</script></body></html>"
    )
    # What the reader sees: a cell cut off on the right, math left raw (no MathJax), noise.
    long_line = "x = " + " + ".join(f"value_{i}" for i in range(40))
    (root / "book" / "noisy.html").write_text(
        "<html><body><main style='width: 600px'>"
        "<p>Raw math: \\(\\frac{a}{b}\\)</p>"
        f'<div class="cell"><div class="cell_input"><div class="highlight"><pre style="overflow: auto">'
        f"{long_line}</pre></div></div>"
        # a static code block of the prose (not a cell), as long
        '<div class="highlight-bash notranslate"><div class="highlight"><pre style="overflow: auto">'
        "python -m hp_mini rank " + " ".join(f"--option-{i} value" for i in range(30)) + "</pre></div></div>"
        '<div class="cell_output"><div class="output stream"><div class="highlight"><pre>'
        "  0%|          | 0/10\nWARNING:root: No pretrained weights loaded</pre></div></div>"
        # a widget's static table in a scrolling box, wider than the page
        '<div class="output text_html"><div style="overflow-x: auto"><table><tr>'
        + "".join(f"<td>column_{i}_header</td>" for i in range(30))
        + "</tr></table></div></div></div></div></main></body></html>"
    )
    return root


def test_check_links_finds_missing_files_and_anchors(tmp_path: Path):
    root = site(tmp_path)
    base = "http://127.0.0.1:8000"
    ok, n = check_pages.check_links(root, base, [f"{base}/book/good.html#part", f"{base}/index.html#top",
                                                 f"{base}/book/", "https://example.org/x"])
    assert ok == ["link to a missing file: http://127.0.0.1:8000/book/"] and n == 3
    bad, n = check_pages.check_links(root, base, [f"{base}/book/good.html#nowhere", f"{base}/book/missing.html"])
    assert n == 2 and len(bad) == 2
    assert any("missing anchor" in b and "#nowhere" in b for b in bad)
    assert any("missing file" in b and "missing.html" in b for b in bad)


def test_console_classification():
    origin = "http://127.0.0.1:8000"
    entries = [
        {"level": "SEVERE", "source": "network",
         "message": "https://unpkg.com/@jupyter-widgets/html-manager@^1.0.1/dist/embed-amd.js - Failed to load resource: net::ERR_NAME_NOT_RESOLVED"},
        {"level": "SEVERE", "source": "network",
         "message": "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js - Failed to load resource: net::ERR_NAME_NOT_RESOLVED"},
        {"level": "SEVERE", "source": "network", "message": "https://evil.example.com/x.js - Failed to load resource"},
        {"level": "SEVERE", "source": "network", "message": f"{origin}/_static/x.css - Failed to load resource: 404"},
        {"level": "SEVERE", "source": "network", "message": f"{origin}/favicon.ico - Failed to load resource: 404"},
        {"level": "SEVERE", "source": "javascript", "message": f"{origin}/a.html 3:1 Uncaught ReferenceError: f is not defined"},
        {"level": "WARNING", "source": "console-api", "message": "just a warning"},
    ]
    failures, offline = check_pages.classify_console(entries, origin)
    assert len(offline) == 1 and offline[0].startswith("unpkg.com")
    # MathJax is served with the book: one loaded from a CDN is a failure, not "offline".
    assert len(failures) == 4
    assert any("cdn.jsdelivr.net" in f and "mathjax" in f for f in failures)
    assert any("evil.example.com" in f for f in failures)
    assert any("x.css" in f for f in failures)
    assert any("ReferenceError" in f for f in failures)


needs_browser = pytest.mark.skipif(
    not (shutil.which("chromium") and Path("/usr/bin/chromedriver").exists() and importlib.util.find_spec("selenium")),
    reason="needs chromium, chromedriver and selenium (.ci/install_browser.sh)",
)


@needs_browser
def test_checker_in_chromium_passes_good_pages_and_fails_bad_ones(tmp_path: Path, capsys):
    root = site(tmp_path)
    shots = tmp_path / "shots"
    status = check_pages.main(["--html", str(root), "--screenshots", str(shots)])
    assert status == 1
    report = {r["page"]: r for r in json.loads((shots / "report.json").read_text())}
    assert set(report) == {"index.html", "book/good.html", "book/bad.html", "book/noisy.html"}
    assert report["index.html"]["ok"] and report["book/good.html"]["ok"], report
    bad = "\n".join(report["book/bad.html"]["failures"])
    assert "missing anchor" in bad and "missing file" in bad
    assert "image not rendered" in bad and "nothing.png" in bad
    assert "undefined_function" in bad
    noisy = report["book/noisy.html"]["failures"]
    assert any(f.startswith("code cut off at 1280 px") and "value_0 + value_1" in f for f in noisy), noisy
    assert any(f.startswith("code cut off at 1280 px") and "--option-0 value" in f for f in noisy), noisy
    assert any(f.startswith("raw LaTeX after load") for f in noisy), noisy
    assert any(f.startswith("progress bar in output") for f in noisy), noisy
    assert any(f.startswith("warning in output") and "No pretrained" in f for f in noisy), noisy
    assert any(f.startswith("output cut off") and "column_0_header" in f for f in noisy), noisy
    for page in ("index", "book__good", "book__bad", "book__noisy"):
        assert (shots / f"{page}.png").stat().st_size > 1000


# --------------------------------------------------------------------------- #
# What a reader sees: myst-nb's markup, as the pages have it after load
# --------------------------------------------------------------------------- #


def cell(source: str, *outputs: str) -> str:
    """A code cell as myst-nb writes it: the source, then each output block."""
    blocks = "".join(
        f'<div class="output stream highlight-myst-ansi notranslate"><div class="highlight">'
        f"<pre><span></span>{out}</pre></div></div>" for out in outputs)
    return (
        '<div class="cell docutils container"><div class="cell_input docutils container">'
        '<div class="highlight-ipython3 notranslate"><div class="highlight"><pre><span></span>'
        f'{source}</pre></div></div></div><div class="cell_output docutils container">{blocks}</div></div>'
    )


TYPESET = ('<span class="math notranslate nohighlight"><mjx-container class="MathJax" jax="CHTML">'
           '<mjx-math><mjx-mi class="mjx-i"><mjx-c class="mjx-c1D465"></mjx-c></mjx-mi></mjx-math>'
           '<mjx-assistive-mml><math><mi>x</mi></math></mjx-assistive-mml></mjx-container></span>')


def page(*body: str) -> str:
    return "<html><head><script>const a = '$$ \\\\frac';</script></head><body>" + "".join(body) + "</body></html>"


def test_clean_page_has_no_text_findings():
    html = page(
        f"<p>The write {TYPESET} of a head, 95% of the time.</p>",
        "<p>Inline <code>\\frac{a}{b}</code> in code is code, not math.</p>",
        cell("x = r'\\begin{align} $$'  # LaTeX inside code is fine",
             "accuracy 0.94\nno warnings here, 100% done | 3 heads"),
    )
    assert check_pages.text_findings(html) == []


@pytest.mark.parametrize("raw", ["$$ e = mc^2 $$", "\\(x\\)", "\\[ y \\]", "\\frac{1}{2}",
                                 "\\begin{aligned} a \\end{aligned}", "\\text{MLPs}"])
def test_raw_latex_left_in_prose_fails(raw: str):
    html = page(f'<p>Before <span class="math notranslate nohighlight">{raw}</span> after.</p>')
    findings = check_pages.text_findings(html)
    assert findings and all(f.startswith("raw LaTeX after load") for f in findings)


def test_progress_bars_and_warnings_in_outputs_fail():
    html = page(
        cell("run()", "  0%|          | 0/10 [00:00<?, ?it/s]"),
        cell("load()", "WARNING:root: No pretrained weights loaded"),
        cell("f()", "ok\n/x.py:3: UserWarning: something\n  warnings.warn(x)"),
        cell("g()", " 40%|####      | 4/10"),
        cell("load()", "Generating selection split: 145 examples [00:00, 67831.15 examples/s]"),
    )
    findings = check_pages.text_findings(html)
    assert len(findings) == 5, findings
    assert sum(f.startswith("progress bar in output") for f in findings) == 3
    assert any("output 2" in f and "No pretrained weights" in f for f in findings)
    assert any("output 3" in f and "UserWarning" in f for f in findings)
    # The same words in a cell's source or in prose are not output.
    assert check_pages.text_findings(page(cell("tqdm  # 0%| WARNING"), "<p>WARNING: prose 0%|</p>")) == []


def test_unclosed_tags_do_not_hide_text():
    html = page("<p>one<p>two <li>three", cell("x", "  0%|  | 0/1"), "<p>\\frac</p>")
    findings = check_pages.text_findings(html)
    assert any("progress bar" in f for f in findings)
    assert any("raw LaTeX" in f for f in findings)


def test_overflow_is_measured_per_block():
    blocks = [
        {"where": "code", "scrollWidth": 700, "clientWidth": 700, "text": "fits"},
        {"where": "code", "scrollWidth": 701, "clientWidth": 700, "text": "rounding"},
        {"where": "code", "scrollWidth": 912, "clientWidth": 700, "text": "x = a_very_long_line"},
        {"where": "output", "scrollWidth": 1500, "clientWidth": 700, "text": "a wide table"},
    ]
    failures = check_pages.overflow_failures(blocks)
    assert len(failures) == 2
    assert failures[0].startswith("code cut off at 1280 px") and "a_very_long_line" in failures[0]
    assert failures[1].startswith("output cut off") and "1500 px" in failures[1]


@needs_browser
def test_math_renders_offline_with_the_mathjax_served_by_the_book(tmp_path: Path):
    """The book's own MathJax copy typesets math in an offline browser: no raw LaTeX is left."""
    pytest.importorskip("mathjax", reason="needs django-static-mathjax (the [book] extra)")
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import hp_book

    root = tmp_path / "html"
    hp_book.copy_mathjax(root / "_static" / "mathjax", hp_book.mathjax_es5())
    # As sphinx.ext.mathjax writes it with mathjax_path = "mathjax/tex-mml-chtml.js".
    (root / "index.html").write_text(
        '<html><head><script defer="defer" src="_static/mathjax/tex-mml-chtml.js"></script></head><body>'
        '<p>Inline <span class="math notranslate nohighlight">\\(\\frac{a}{b}\\)</span> and</p>'
        '<div class="math notranslate nohighlight">\\[\\begin{aligned} e_h &amp;= \\sum_i x_i \\end{aligned}\\]</div>'
        "</body></html>"
    )
    shots = tmp_path / "shots"
    assert check_pages.main(["--html", str(root), "--screenshots", str(shots)]) == 0
    report = json.loads((shots / "report.json").read_text())
    assert report[0]["ok"] and not report[0]["offline_external"], report


# --------------------------------------------------------------------------- #
# Interactive heatmaps (hp_mini.viz.interactive): pointing at a head shows it
# --------------------------------------------------------------------------- #


def test_panel_problem_wants_the_label_of_the_head_pointed_at():
    assert check_pages.panel_problem("L3H4", "L3H4") is None
    assert "not L3H4" in check_pages.panel_problem("L3H4", "L0H0")
    assert "not a head label" in check_pages.panel_problem("L3H4", "(no label) Hover over a cell")
    assert "no panel" in check_pages.panel_problem("L3H4", None)


def test_scripts_inside_outputs_are_not_read_as_output_text():
    data = '<script type="application/json">{"atoms": ["WARNING", " 0%|"]}</script>'
    html = page(cell("show()", "fine"),
                '<div class="cell_output"><div class="output text_html">'
                f'<div>a heatmap</div>{data}<script>const w = "UserWarning: no";</script></div></div>')
    assert check_pages.text_findings(html) == []
    # Text that the reader sees in the same output is still read.
    assert check_pages.text_findings(page(
        f'<div class="cell_output"><div class="output text_html">{data}<p>WARNING: shown</p></div></div>'))


def heatmap_html() -> str:
    """A real heatmap of tiny random heads, as hp_mini.viz.interactive draws it."""
    import torch

    import hp_mini
    from hp_mini.record.activations import HeadActivations
    from hp_mini.viz.interactive import logit_lens_atoms, ranking_heatmap

    g = torch.Generator().manual_seed(0)
    acts = HeadActivations(torch.randn(20, 3, 4, 4, generator=g), torch.randn(3, 4, 12, 4, generator=g),
                           None, [0, 1, 2])
    atoms = torch.randn(30, 12, generator=g)
    somp = hp_mini.rank_heads(acts, atoms, n_atoms=4, progress=False)
    lens = hp_mini.rank_heads(acts, atoms, method="logit_lens", progress=False)
    return ranking_heatmap(somp, lens, logit_lens_atoms(acts, atoms), title="tiny").html()


@needs_browser
def test_checker_points_at_heads_of_interactive_heatmaps(tmp_path: Path):
    root = tmp_path / "html"
    root.mkdir()
    good = heatmap_html()
    (root / "index.html").write_text(f"<html><body>{good}{heatmap_html()}</body></html>")
    # The same heatmap without its script: the panel never shows a head.
    script = good.rindex("<script>")
    broken = good[:script] + good[good.index("</script>", script) + len("</script>"):]
    assert broken.count("<script") == 1  # only the JSON data is left
    (root / "broken.html").write_text(f"<html><body>{broken}</body></html>")
    shots = tmp_path / "shots"
    assert check_pages.main(["--html", str(root), "--screenshots", str(shots)]) == 1
    report = {r["page"]: r for r in json.loads((shots / "report.json").read_text())}
    assert report["index.html"]["ok"], report["index.html"]
    failures = report["broken.html"]["failures"]
    assert len(failures) == 2, failures
    assert failures[0].startswith("interactive heatmap 1: after a hover on L") and "not a head label" in failures[0]
    assert failures[1].startswith("interactive heatmap 1: after a click on L"), failures


class FakeDriver:
    def __init__(self, started: list):
        started.append(self)
        self.quit_called = False

    def quit(self):
        self.quit_called = True


def test_a_browser_that_dies_under_a_page_is_started_afresh_once_and_other_errors_are_raised():
    exceptions = pytest.importorskip("selenium.common.exceptions")
    started: list[FakeDriver] = []
    browser = check_pages.Browser(lambda: FakeDriver(started))
    died = exceptions.InvalidSessionIdException(
        "invalid session id: session deleted as the browser has closed the connection\n"
        "from disconnected: Unable to receive message from renderer")
    calls = []

    def dies_once(driver):
        calls.append(driver)
        if len(calls) == 1:
            raise died
        return "checked"

    assert browser.run(dies_once) == "checked"
    assert calls == started and len(started) == 2 and started[0].quit_called and browser.restarts == 1

    def always_dies(driver):
        raise died

    with pytest.raises(exceptions.InvalidSessionIdException):
        browser.run(always_dies)  # one fresh start per run, not more
    assert len(started) == 3

    def page_fails(driver):
        raise AssertionError("the panel shows L0H0")

    def page_errs(driver):
        raise exceptions.NoSuchElementException("no such element: div.hp-heatmap")

    for failing in (page_fails, page_errs):
        with pytest.raises((AssertionError, exceptions.NoSuchElementException)):
            browser.run(failing)
    assert len(started) == 3  # a failed page is not a dead browser: no retry
    browser.quit()
    assert started[-1].quit_called
