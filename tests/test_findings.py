"""The "What we found" box: validated findings, rendered as text and as escaped HTML."""

from __future__ import annotations

import pytest

from hp_mini.exercises.findings import Finding, FindingsBox, what_we_found


def test_finding_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty string"):
        Finding("  ", True)
    with pytest.raises(ValueError, match="non-empty string"):
        Finding(3, True)
    with pytest.raises(ValueError, match="True, False or None"):
        Finding("a claim", "yes")
    with pytest.raises(ValueError, match="True, False or None"):
        Finding("a claim", 1.5)
    with pytest.raises(TypeError, match="numbers must be a string.*float"):
        Finding("a claim", True, 0.5)


def test_what_we_found_rejects_empty_and_foreign_items():
    with pytest.raises(ValueError, match="at least one Finding"):
        what_we_found([])
    with pytest.raises(TypeError, match="must be a Finding, got str, tuple"):
        what_we_found([Finding("ok", None), "claim", ("claim", True)])


def test_status_words():
    assert [Finding("c", r).status for r in (True, False, None)] == ["reproduced", "not reproduced", "observed"]


def test_text_rendering_lists_each_finding_in_order():
    box = what_we_found(
        [Finding("first claim", True, "x 0.50"), Finding("second claim", False), Finding("third", None, "n 3")],
        title="Results",
    )
    assert isinstance(box, FindingsBox)
    assert str(box) == (
        "Results\n"
        "- [reproduced] first claim: x 0.50\n"
        "- [not reproduced] second claim\n"
        "- [observed] third: n 3"
    )
    assert repr(box) == str(box)


def test_html_rendering_escapes_claims_numbers_and_title():
    box = what_we_found([Finding("a < b & c", False, "p < 0.05 & q > 1")], title="<T> & co")
    html = box._repr_html_()
    assert html.startswith('<div class="admonition hp-found">') and html.endswith("</ul></div>")
    assert '<p class="admonition-title">&lt;T&gt; &amp; co</p>' in html
    assert "a &lt; b &amp; c: p &lt; 0.05 &amp; q &gt; 1</li>" in html
    assert "a < b" not in html and "& c" not in html
    assert '<span class="hp-found-status hp-found-not-reproduced">not reproduced</span>' in html
    assert html.count("<li>") == 1


def test_html_without_numbers_has_no_colon():
    html = what_we_found([Finding("plain", None)])._repr_html_()
    assert "</span> plain</li>" in html and "hp-found-observed" in html
