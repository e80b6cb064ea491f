"""hp_mini.viz.interactive: the embedded data equals the rankings, tokens are escaped, bad input is
refused, and in headless Chromium hovering or clicking a head shows it in the panel."""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import hp_mini
from helpers import load_check_pages
from hp_mini.record.activations import HeadActivations, HeadMoments
from hp_mini.read.dictionary import Dictionary
from hp_mini.viz.interactive import RankingHeatmap, logit_lens_atoms, ranking_heatmap
from hp_mini.viz.markup import VIRIDIS, colour

#: Token strings a page must show as text, never as markup.
NASTY = ['</script><script>alert(1)</script>', 'a & b', '"quoted"', "it's", "new\nline", "<!--", "\u2028"]


def synthetic(n=30, layers=(0, 1, 2, 3), n_heads=5, d_head=4, d_model=16, v=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.nn.functional.normalize(torch.randn(v, d_model, generator=g), dim=1)
    W_O = torch.randn(len(layers), n_heads, d_model, d_head, generator=g) / d_model**0.5
    z = torch.randn(n, len(layers), n_heads, d_head, generator=g) + 0.3
    acts = HeadActivations(z, W_O, None, list(layers), None, [f"prompt {i}" for i in range(n)])
    labels = [f"tok{i}" for i in range(v)]
    labels[: len(NASTY)] = NASTY
    return acts, Dictionary(D, labels)


@pytest.fixture(scope="module")
def rankings():
    acts, dic = synthetic()
    somp = hp_mini.rank_heads(acts, dic, n_atoms=6, progress=False)
    lens = hp_mini.rank_heads(acts, dic, method="logit_lens", progress=False)
    return acts, dic, somp, lens


class _Parts(HTMLParser):
    """The ids, the JSON data and the scripts of a page, read back as a browser would."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.data, self.scripts, self.titles = [], [], [], []
        self._in = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "script":
            self._in = "data" if attrs.get("type") == "application/json" else "script"
        elif tag == "title":
            self._in = "title"

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "data":
            self.data.append(data)
        elif self._in == "script":
            self.scripts.append(data)
        elif self._in == "title":
            self.titles.append(data)


def parse(html: str) -> _Parts:
    parts = _Parts()
    parts.feed(html)
    parts.close()
    return parts


def test_logit_lens_atoms_are_the_largest_mean_logits(rankings):
    acts, dic, _, lens = rankings
    atoms = logit_lens_atoms(acts, dic, n_atoms=4)
    assert list(atoms) == acts.heads
    score = dict(zip(lens.heads, lens.scores.tolist()))
    for layer, head in acts.heads:
        mean_logit = (acts.head(layer, head).double() @ dic.atoms.double().T).mean(0)  # [v]
        # The lens score is the mean of these logits over all atoms ...
        assert mean_logit.mean().item() == pytest.approx(score[(layer, head)], rel=1e-4, abs=1e-6)
        # ... and the top atoms are the largest, in decreasing order.
        best = sorted(range(len(dic)), key=lambda j: -mean_logit[j].item())[:4]
        assert atoms[(layer, head)] == [dic.labels[j] for j in best]
    # From moments only, the same atoms.
    z = acts.z.double()
    light = HeadActivations(None, acts.W_O, None, list(acts.layers),
                            HeadMoments(z.shape[0], z.sum(0), torch.einsum("nlhk,nlhj->lhkj", z, z)))
    assert logit_lens_atoms(light, dic, n_atoms=4) == atoms
    assert logit_lens_atoms(acts, dic, n_atoms=0)[(0, 0)] == []
    assert len(logit_lens_atoms(acts, dic, n_atoms=1000)[(0, 0)]) == len(dic)


def test_embedded_data_equals_the_rankings(rankings):
    acts, dic, somp, lens = rankings
    lens_atoms = logit_lens_atoms(acts, dic, n_atoms=3)
    page = ranking_heatmap(somp, lens, lens_atoms, n_atoms=3, title="test").html()
    parts = parse(page)
    assert len(parts.data) == 1
    data = json.loads(parts.data[0])
    assert [(h["layer"], h["head"]) for h in data["cells"]] == sorted(acts.heads)
    assert data["layers"] == [0, 1, 2, 3] and data["n_heads"] == 5
    n = len(somp)
    for position, (h, s) in enumerate(zip(somp.heads, somp.scores.tolist())):
        entry = next(e for e in data["cells"] if (e["layer"], e["head"]) == h)
        assert entry["label"] == f"L{h[0]}H{h[1]}"
        assert entry["somp"] == s and entry["somp_rank"] == position + 1
        assert entry["somp_atoms"] == somp.results[h].ordered_labels[:3]
    for position, (h, s) in enumerate(zip(lens.heads, lens.scores.tolist())):
        entry = next(e for e in data["cells"] if (e["layer"], e["head"]) == h)
        assert entry["lens"] == s and entry["lens_rank"] == position + 1
        assert entry["lens_atoms"] == lens_atoms[h]
    assert data["cells"][data["start"]]["label"] == hp_mini.head_label(*somp.heads[0])
    assert sorted(e["somp_rank"] for e in data["cells"]) == list(range(1, n + 1))
    # Each map has one cell per head, with its label in the tooltip.
    for key in ("somp", "lens"):
        assert page.count(f'data-metric="{key}"') == 1
    assert sum(t.startswith("L3H4:") for t in parts.titles) == 2


def test_tokens_are_escaped(rankings):
    acts, dic, somp, lens = rankings
    lens_atoms = {h: list(NASTY) for h in somp.heads}
    page = ranking_heatmap(somp, lens, lens_atoms, n_atoms=len(NASTY), title="<b>&title</b>").html()
    # No token ends a script or opens a comment: the raw text of the page holds none of them.
    assert page.count("</script>") == 2 and "<!--" not in page and "\u2028" not in page
    assert "<b>&title" not in page and "&lt;b&gt;&amp;title&lt;/b&gt;" in page
    parts = parse(page)
    assert len(parts.scripts) == 1  # the injected "<script>alert(1)" is not a script
    data = json.loads(parts.data[0])
    assert all(h["lens_atoms"] == NASTY for h in data["cells"])


def test_every_rendering_has_its_own_ids(rankings):
    acts, dic, somp, lens = rankings
    heatmap = ranking_heatmap(somp, lens, logit_lens_atoms(acts, dic))
    first, second = parse(heatmap._repr_html_()).ids, parse(heatmap._repr_html_()).ids
    assert len(first) == 1 and len(second) == 1 and first != second
    fixed = heatmap.html(element_id="map-1")
    assert parse(fixed).ids == ["map-1"] and 'KEY]("map-1")' in fixed
    assert "RankingHeatmap" in repr(heatmap) and hp_mini.head_label(*somp.heads[0]) in repr(heatmap)
    with pytest.raises(ValueError, match="element_id"):
        heatmap.html(element_id='x"><script>')


def test_bad_input_is_refused(rankings):
    acts, dic, somp, lens = rankings
    atoms = logit_lens_atoms(acts, dic)
    with pytest.raises(TypeError, match="somp must be a HeadRanking"):
        ranking_heatmap(somp.to_frame(), lens, atoms)
    with pytest.raises(ValueError, match="method='logit_lens'"):
        ranking_heatmap(somp, somp, atoms)
    with pytest.raises(ValueError, match="method='somp'"):
        ranking_heatmap(lens, lens, atoms)
    fewer = hp_mini.HeadRanking(somp.heads[:-1], somp.scores[:-1], "somp", somp.results)
    with pytest.raises(ValueError, match="same heads"):
        ranking_heatmap(fewer, lens, atoms)
    with pytest.raises(ValueError, match="lens_atoms .* missing for L0H0"):
        ranking_heatmap(somp, lens, {h: a for h, a in atoms.items() if h != (0, 0)})
    with pytest.raises(TypeError, match="lens_atoms must map"):
        ranking_heatmap(somp, lens, list(atoms.values()))
    with pytest.raises(TypeError, match="list of strings"):
        ranking_heatmap(somp, lens, {**atoms, (0, 0): "tok1"})
    nan = hp_mini.HeadRanking(lens.heads, torch.full_like(lens.scores, float("nan")), "logit_lens")
    with pytest.raises(ValueError, match="NaN"):
        ranking_heatmap(somp, nan, atoms)
    with pytest.raises(ValueError, match="no pursuit results"):
        ranking_heatmap(hp_mini.HeadRanking(somp.heads, somp.scores, "somp"), lens, atoms)
    with pytest.raises(TypeError, match="n_atoms"):
        ranking_heatmap(somp, lens, atoms, n_atoms=2.5)
    with pytest.raises(ValueError, match="n_atoms"):
        logit_lens_atoms(acts, dic, n_atoms=-1)
    with pytest.raises(TypeError, match="acts must be HeadActivations"):
        logit_lens_atoms(dic, dic)
    with pytest.raises(ValueError, match="atoms are 8 wide"):
        logit_lens_atoms(acts, torch.randn(5, 8))
    with pytest.raises(TypeError, match="title"):
        ranking_heatmap(somp, lens, atoms, title=None)


# --------------------------------------------------------------------------- #
# In a browser
# --------------------------------------------------------------------------- #

needs_browser = pytest.mark.skipif(
    not (shutil.which("chromium") and Path("/usr/bin/chromedriver").exists() and importlib.util.find_spec("selenium")),
    reason="needs chromium, chromedriver and selenium (.ci/install_browser.sh)",
)


@needs_browser
def test_hovering_and_clicking_show_the_head_in_chromium(rankings, tmp_path: Path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    acts, dic, somp, lens = rankings
    lens_atoms = logit_lens_atoms(acts, dic, n_atoms=3)
    lens_atoms[lens.heads[-1]] = [NASTY[0], NASTY[4], NASTY[6]]  # shown as text, not run or parsed
    heatmap = ranking_heatmap(somp, lens, lens_atoms, n_atoms=3)
    assert isinstance(heatmap, RankingHeatmap)
    # Two heatmaps of the same data on one page, then a paragraph to move the pointer to.
    page = tmp_path / "page.html"
    page.write_text(f"<html><body>{heatmap._repr_html_()}{heatmap._repr_html_()}<p id='away'>away</p>"
                    "</body></html>", encoding="utf-8")

    check_pages = load_check_pages()

    def hover_and_click(driver):
        driver.get(page.as_uri())
        first, second = driver.find_elements(By.CSS_SELECTOR, "div.hp-heatmap")
        panels = [m.find_element(By.CSS_SELECTOR, ".hp-heatmap-panel") for m in (first, second)]
        label = lambda i: panels[i].find_element(By.CSS_SELECTOR, ".hp-heatmap-label").text  # noqa: E731
        best = hp_mini.head_label(*somp.heads[0])
        assert label(0) == best and label(1) == best  # each opens on the best SOMP head

        def cell(root, metric, head):
            i = sorted(acts.heads).index(head)
            return root.find_element(By.CSS_SELECTOR, f'svg[data-metric="{metric}"] rect[data-i="{i}"]')

        # Hovering a cell of the lens map of the second heatmap shows that head there only.
        head = lens.heads[-1]
        ActionChains(driver).move_to_element(cell(second, "lens", head)).perform()
        text = panels[1].text
        assert label(1) == hp_mini.head_label(*head) and label(0) == best
        score = dict(zip(lens.heads, lens.scores.tolist()))[head]
        assert f"rank {len(lens)} of {len(lens)}" in text and f"{score:#.3g}" in text
        for atom in lens_atoms[head] + somp.results[head].ordered_labels[:3]:
            # tokens shown as text, quoted, with newlines and line separators escaped
            assert json.dumps(atom, ensure_ascii=False).replace("\u2028", "\\u2028") in text
        # Moving away goes back to the pinned head; clicking pins another one.
        ActionChains(driver).move_to_element(driver.find_element(By.ID, "away")).perform()
        assert label(1) == best
        clicked = (2, 3)
        ActionChains(driver).move_to_element(cell(second, "somp", clicked)).click().perform()
        ActionChains(driver).move_to_element(driver.find_element(By.ID, "away")).perform()
        assert label(1) == "L2H3"
        # The arrow keys move the pinned head when a map has the focus.
        second.find_element(By.CSS_SELECTOR, 'svg[data-metric="somp"]').send_keys(Keys.ARROW_DOWN)
        assert label(1) == "L3H3"
        second.find_element(By.CSS_SELECTOR, 'svg[data-metric="somp"]').send_keys(Keys.ARROW_LEFT)
        assert label(1) == "L3H2" and label(0) == best
        # The token that tries to close the script is shown as text; no script error on the page.
        ActionChains(driver).move_to_element(cell(first, "somp", (0, 0))).perform()
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]

    browser = check_pages.Browser(functools.partial(
        check_pages.start_browser, shutil.which("chromium"), "/usr/bin/chromedriver", tmp_path / "profile"))
    try:
        browser.run(hover_and_click)  # a browser that dies under the page is started afresh once
    finally:
        browser.quit()


def test_somp_vmax_caps_the_colour_scale_not_the_scores(rankings):
    acts, dic, somp, lens = rankings
    atoms = logit_lens_atoms(acts, dic)
    top = f'fill="{colour(VIRIDIS, 1.0)}"'
    plain = ranking_heatmap(somp, lens, atoms).html()
    cap = float(somp.scores.median())
    capped = ranking_heatmap(somp, lens, atoms, somp_vmax=cap).html()
    above = int((somp.scores >= cap).sum())
    # the top colour: the best head (and the colour bar's end) uncapped; every head at or above the cap capped
    assert plain.count(top) == 2 and capped.count(top) == above + 1 and above > 1
    assert json.loads(parse(capped).data[0]) == json.loads(parse(plain).data[0])  # the true scores
    with pytest.raises(ValueError, match="somp_vmax must be a positive finite number"):
        ranking_heatmap(somp, lens, atoms, somp_vmax=0.0)
    with pytest.raises(TypeError, match="somp_vmax must be a number"):
        ranking_heatmap(somp, lens, atoms, somp_vmax="0.5")
