"""hp_mini.viz.widgets: the widgets' callbacks change what they show, and the static stand-ins."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

import matplotlib

matplotlib.use("Agg")

import hp_mini  # noqa: E402
from helpers import CharTokenizer, tiny_model  # noqa: E402
from hp_mini.viz.widgets import ConceptBuilder, EditingPlayground, HeadExplorer

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PROMPTS = [
    "the red fox jumps",
    "a blue sky over the sea",
    "green grass and yellow sun",
    "seven cats sleep all day",
    "on monday we sail north",
    "paris is in france",
]


class TextTokenizer(CharTokenizer):
    """CharTokenizer with encode/decode (one token per character, ids 1..90)."""

    def encode(self, text, add_special_tokens=False):
        return self._ids(text)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 1) if i - 1 >= 32 else chr(i - 1 + 90) for i in map(int, ids))

    def batch_decode(self, ids, skip_special_tokens=True):
        return [self.decode(row) for row in ids]


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_model("llama"), TextTokenizer()
    acts = hp_mini.record_heads(model, tok, PROMPTS, progress=False)
    full = hp_mini.unembedding_dictionary(model, tok)
    return model, tok, acts, full


# -- head explorer --------------------------------------------------------- #


def test_explorer_view_matches_an_independent_computation(setup):
    _, _, acts, full = setup
    explorer = HeadExplorer(acts, full, n_atoms=5, n_prompts=3, head=(1, 2))
    view = explorer.current
    X = acts.head(1, 2)
    expected = hp_mini.somp(X, full, n_atoms=5)
    assert view.pursuit.atoms.tolist() == expected.atoms.tolist()
    torch.testing.assert_close(view.pursuit.evr.double(), expected.evr.double(), atol=1e-4, rtol=0)
    lens = full.atoms @ X.mean(0)
    assert view.lens_labels == [full.labels[i] for i in torch.topk(lens, 5).indices]
    loudest = torch.topk(X.norm(dim=1), 3).indices
    assert view.prompts == [PROMPTS[i] for i in loudest]


def test_explorer_sliders_change_the_head_shown(setup):
    _, _, acts, full = setup
    explorer = HeadExplorer(acts, full, n_atoms=5, head=(0, 0))
    ui = explorer.ui
    before = explorer._output.value
    assert "Head <b>L0H0</b>" in before
    explorer._head.value = 4
    assert explorer.head == (0, 4)
    assert "Head <b>L0H4</b>" in explorer._output.value and explorer._output.value != before
    explorer._layer.value = 1
    assert explorer.head == (1, 4)
    assert "Head <b>L1H4</b>" in explorer._output.value
    # The ranking drop-down moves the sliders.
    ranking = hp_mini.rank_heads(acts, full, method="logit_lens", progress=False)
    ranked = HeadExplorer(acts, full, n_atoms=5, ranking=ranking)
    ranked.ui
    ranked._ranked.value = tuple(ranking.heads[3])
    assert ranked.head == tuple(ranking.heads[3])
    assert (ranked._layer.value, ranked._head.value) == tuple(ranking.heads[3])
    assert ui is explorer.ui  # built once


def test_explorer_static_stand_in(setup):
    _, _, acts, full = setup
    explorer = HeadExplorer(acts, full, n_atoms=4, head=(1, 0))
    fig = explorer.static()
    assert len(fig.axes) == 3
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [repr(s) for s in explorer.current.pursuit.labels]
    bundle = explorer._repr_mimebundle_()
    assert bundle["text/html"].count('<img src="data:image/png;base64,') == 1
    assert WIDGET_VIEW in bundle and bundle[WIDGET_VIEW]["model_id"] == explorer.ui.model_id


def test_explorer_rejects_moments_only_and_unknown_heads(setup):
    model, tok, acts, full = setup
    moments = hp_mini.record_heads(model, tok, PROMPTS, store="moments", progress=False)
    with pytest.raises(ValueError, match="store='samples'"):
        HeadExplorer(moments, full)
    with pytest.raises(ValueError, match="L5H0 was not recorded"):
        HeadExplorer(acts, full, head=(5, 0))


def test_explorer_lists_the_tokens_of_a_per_token_recording(setup):
    model, tok, _, full = setup
    tokens = hp_mini.record_heads(model, tok, PROMPTS[:2], pool=None, progress=False)
    explorer = HeadExplorer(tokens, full, n_atoms=3, n_prompts=4, head=(0, 1))
    loudest = torch.topk(tokens.head(0, 1).norm(dim=1), 4).indices
    want = [f"{PROMPTS[p]} (token {t})" for p, t in tokens.positions[loudest].tolist()]
    assert explorer.current.prompts == want
    assert len(tokens.prompts) == 2 < tokens.n_prompts  # a row is a token, not a prompt


def test_explorer_refuses_bad_counts_and_dictionaries(setup):
    _, _, acts, full = setup
    with pytest.raises(ValueError, match=f"n_atoms must be between 1 and {len(full)}, got {len(full) + 1}"):
        HeadExplorer(acts, full, n_atoms=len(full) + 1)
    with pytest.raises(ValueError, match="n_atoms must be at least 1, got 0"):
        HeadExplorer(acts, full, n_atoms=0)
    with pytest.raises(TypeError, match="n_prompts must be an integer"):
        HeadExplorer(acts, full, n_prompts=2.5)
    with pytest.raises(ValueError, match="the dictionary is empty"):
        HeadExplorer(acts, full.atoms[:0])
    with pytest.raises(ValueError, match="atoms are 3 wide"):
        HeadExplorer(acts, torch.randn(4, 3))
    with pytest.raises(TypeError, match="acts must be HeadActivations"):
        HeadExplorer(full, full)


# -- editing playground ---------------------------------------------------- #


def test_playground_alpha_slider_changes_the_edited_text(setup):
    model, tok, acts, full = setup
    ranking = hp_mini.rank_heads(acts, full, method="logit_lens", progress=False)
    playground = EditingPlayground(model, tok, {"tokens": ranking}, PROMPTS[:3], n_heads=6, alpha=1.0,
                                   max_new_tokens=8, chat=False)
    playground.ui
    table = playground.static()
    # alpha = 1 leaves the heads as they are.
    assert table["with edit"].tolist() == table["without edit"].tolist()
    before = playground._output.value
    playground._alpha.value = -3.0
    assert playground.alpha == -3.0
    edited = playground.static()
    assert edited["without edit"].tolist() == table["without edit"].tolist()
    assert edited["with edit"].tolist() != edited["without edit"].tolist()
    assert playground._output.value != before and "alpha = -3" in playground._output.value
    # The edited text is what generate() gives under scale_heads with the same heads.
    with hp_mini.scale_heads(model, {h: -3.0 for h in ranking.heads[:6]}):
        expected = hp_mini.generate(model, tok, PROMPTS[:3], max_new_tokens=8)
    assert edited["with edit"].tolist() == expected
    # Fewer heads: a different edit.
    playground._n.value = 1
    assert playground.heads == ranking.heads[:1]
    assert f"top 1 heads scaled by alpha = -3 ({hp_mini.head_label(*ranking.heads[0])})" in playground._output.value
    # New prompts typed in the box are generated.
    playground._prompts.value = "a new prompt"
    assert playground.prompts == ["a new prompt"]
    assert "a new prompt" in playground._output.value


def test_playground_stop_ends_the_texts_as_generate_does(setup):
    model, tok, acts, full = setup
    ranking = hp_mini.rank_heads(acts, full, method="logit_lens", progress=False)
    playground = EditingPlayground(model, tok, ranking, PROMPTS[:3], n_heads=2, max_new_tokens=12, chat=False,
                                   stop=["R", "Z"])
    table = playground.static()
    with hp_mini.scale_heads(model, {h: -1.0 for h in ranking.heads[:2]}):
        expected = hp_mini.generate(model, tok, PROMPTS[:3], max_new_tokens=12, stop=["R", "Z"])
    assert table["with edit"].tolist() == expected
    assert table["without edit"].tolist() == hp_mini.generate(model, tok, PROMPTS[:3], max_new_tokens=12,
                                                              stop=["R", "Z"])
    # and the stop did end some text early
    assert table["without edit"].tolist() != hp_mini.generate(model, tok, PROMPTS[:3], max_new_tokens=12)


def test_playground_validates_settings(setup):
    model, tok, acts, full = setup
    ranking = hp_mini.rank_heads(acts, full, method="logit_lens", progress=False)
    with pytest.raises(ValueError, match="n_heads must be between 1 and 12"):
        EditingPlayground(model, tok, ranking, PROMPTS, n_heads=50)
    with pytest.raises(ValueError, match="at least one prompt"):
        EditingPlayground(model, tok, ranking, ["  "])


# -- concept builder ------------------------------------------------------- #


def test_concept_builder_reports_kept_and_dropped_tokens(setup):
    model, tok, _, _ = setup
    builder = ConceptBuilder(model, tok, ["a", "red", "b"])
    frame = builder.frame().set_index("word")
    # One character is one token: "a" is kept; " a" splits into ' ' + 'a' and is dropped.
    assert frame.loc["b", "status"] == "kept"
    assert frame.loc["b", "tokens in the dictionary"] == "'b'"
    assert "' b' -> ' ' + 'b'" in frame.loc["b", "dropped variants (why)"]
    assert "too short" in frame.loc["b", "dropped variants (why)"]
    # "red" splits into characters whose first is too short to stand for it: missing.
    assert frame.loc["red", "status"] == "missing"
    assert frame.loc["red", "tokens in the dictionary"] == ""
    assert builder.dictionary.missing == ["red"]
    assert len(builder.dictionary) == 2
    # A word typed twice gives its token once; the second copy says so.
    twice = ConceptBuilder(model, tok, ["a", "a"]).frame()
    assert twice["status"].tolist() == ["kept", "duplicate"]
    assert "typed twice" in twice.loc[1, "dropped variants (why)"]
    said = ConceptBuilder(model, tok, ["a", "b", "a"]).summary()
    assert said.startswith("2 atoms from 2 of 2 distinct words (1 typed twice); 0 words missing (none); 0 variants")


def test_concept_builder_callbacks(setup):
    model, tok, _, _ = setup
    builder = ConceptBuilder(model, tok, ["x"])
    builder.ui
    assert "1 atom from 1 of 1 distinct word;" in builder._output.value
    builder._words.value = "x, y\nz; blue"
    assert builder.words == ["x", "y", "z", "blue"]
    assert "3 atoms from 3 of 4 distinct words; 1 word missing (blue)" in builder._output.value
    builder._policy.value = "drop"
    assert builder.multi_token == "drop"
    assert "the policy 'drop' drops words of several tokens" in builder._output.value
    # A shipped list: with one token per character, no weekday gets a token, and the widget says so.
    builder._preset.value = "weekdays"
    assert builder.words == hp_mini.concept_words("weekdays")
    assert "ValueError:</b> none of the words gave a token" in builder._output.value
    builder._words.value = "q"
    assert "1 atom from 1 of 1 distinct word;" in builder._output.value
    bundle = builder._repr_mimebundle_()
    assert "<table" in bundle["text/html"] and WIDGET_VIEW in bundle
