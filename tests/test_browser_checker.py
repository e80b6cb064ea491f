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

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_pages", ROOT / "tests" / "browser" / "check_pages.py")
check_pages = importlib.util.module_from_spec(spec)
sys.modules["check_pages"] = check_pages
spec.loader.exec_module(check_pages)

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
         "message": "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js - Failed to load resource: net::ERR_NAME_NOT_RESOLVED"},
        {"level": "SEVERE", "source": "network", "message": "https://evil.example.com/x.js - Failed to load resource"},
        {"level": "SEVERE", "source": "network", "message": f"{origin}/_static/x.css - Failed to load resource: 404"},
        {"level": "SEVERE", "source": "network", "message": f"{origin}/favicon.ico - Failed to load resource: 404"},
        {"level": "SEVERE", "source": "javascript", "message": f"{origin}/a.html 3:1 Uncaught ReferenceError: f is not defined"},
        {"level": "WARNING", "source": "console-api", "message": "just a warning"},
    ]
    failures, offline = check_pages.classify_console(entries, origin)
    assert len(offline) == 1 and offline[0].startswith("cdn.jsdelivr.net")
    assert len(failures) == 3
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
    assert set(report) == {"index.html", "book/good.html", "book/bad.html"}
    assert report["index.html"]["ok"] and report["book/good.html"]["ok"], report
    bad = "\n".join(report["book/bad.html"]["failures"])
    assert "missing anchor" in bad and "missing file" in bad
    assert "image not rendered" in bad and "nothing.png" in bad
    assert "undefined_function" in bad
    for page in ("index", "book__good", "book__bad"):
        assert (shots / f"{page}.png").stat().st_size > 1000
