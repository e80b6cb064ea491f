"""Interactive views for Jupyter: explore a head, edit a model, build a concept.

Three widgets built on ipywidgets:

* :class:`HeadExplorer` -- pick a layer and a head: its top atoms by SOMP and by the
  logit lens, its EVR curve, and the prompts on which it writes the most.
* :class:`EditingPlayground` -- pick a concept, a number of its top heads and ``alpha``:
  text generated with and without the edit, side by side.
* :class:`ConceptBuilder` -- type words: the tokens the dictionary gets, and the words
  and variants it drops, with the reason.

Each object displays as its widget in a live kernel (Jupyter, Binder, Colab) and as a
static rendering of its current state elsewhere: its display bundle carries both the
widget view and a ``text/html`` stand-in (a figure and tables), and a front end shows the
richest one it can. The book's HTML build is told to prefer the stand-in
(``nb_mime_priority_overrides`` in ``_config.yml``). ``.static()`` returns the stand-in as a
matplotlib figure or a pandas table, ``.ui`` the ipywidgets box.

Example
-------
>>> import hp_mini
>>> from hp_mini.viz.widgets import HeadExplorer
>>> model, tok = hp_mini.load_model()                                    # doctest: +SKIP
>>> acts = hp_mini.record_heads(model, tok, prompts)                     # doctest: +SKIP
>>> explorer = HeadExplorer(acts, hp_mini.unembedding_dictionary(model, tok))  # doctest: +SKIP
>>> explorer                       # the widget in Jupyter, a figure on a static page  # doctest: +SKIP
>>> explorer.select(12, 3)         # what the sliders do                  # doctest: +SKIP
"""

from __future__ import annotations

import html
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from hp_mini.checks import check_count
from hp_mini.edit.generation import generate
from hp_mini.edit.scaling import scale_heads
from hp_mini.model.sites import Head, head_label
from hp_mini.pursuit import PursuitResult, somp
from hp_mini.rank.ranking import HeadRanking
from hp_mini.read.dictionary import Dictionary, concept_names, concept_words, unembedding_dictionary
from hp_mini.read.lens import logit_lens
from hp_mini.record.activations import HeadActivations
from hp_mini.viz.markup import error_html, figure_html, table_html

__all__ = ["ConceptBuilder", "EditingPlayground", "HeadExplorer", "HeadView"]



# --------------------------------------------------------------------------- #
# Shared machinery: a widget with a static stand-in
# --------------------------------------------------------------------------- #


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _token(label: str) -> str:
    """A token as text that shows its spaces and escapes (``' Paris'``)."""
    return repr(label)


def _mpl_text(text: str) -> str:
    return text.replace("$", r"\$")


class _Interactive:
    """Displays as its widget (live kernel) with a static ``text/html`` stand-in."""

    _ui = None

    @property
    def ui(self):
        """The ipywidgets box (built on first use)."""
        if self._ui is None:
            self._ui = self._build()
        return self._ui

    def _build(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def static_html(self) -> str:  # pragma: no cover - abstract
        """The static rendering of the current state, as HTML."""
        raise NotImplementedError

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = {"text/plain": repr(self), "text/html": self.static_html()}
        try:
            view = self.ui._repr_mimebundle_()
        except Exception:  # no ipywidgets comm (plain Python): the static view only
            view = {}
        bundle.update({k: v for k, v in (view or {}).items() if k != "text/plain"})
        return bundle


# --------------------------------------------------------------------------- #
# Head explorer
# --------------------------------------------------------------------------- #


@dataclass
class HeadView:
    """What the explorer shows for one head (made by :meth:`HeadExplorer.view`).

    Attributes
    ----------
    head : (layer, head)
    pursuit : PursuitResult
        SOMP of the head's outputs in the dictionary.
    lens_labels : list of str
        The atoms with the largest mean logit (the logit lens), largest first.
    lens_logits : Tensor ``[k]``, float64
        Their mean logits.
    prompts : list of str
        The prompts on which the head writes the most (for a per-token
        recording, each with the position of the token).
    prompt_norms : Tensor ``[m]``
        The norms ``||x_i||`` of its outputs on them.
    """

    head: Head
    pursuit: PursuitResult
    lens_labels: list[str]
    lens_logits: torch.Tensor
    prompts: list[str]
    prompt_norms: torch.Tensor

    @property
    def label(self) -> str:
        """The head as ``L{layer}H{head}``."""
        return head_label(*self.head)

    def atoms_frame(self):
        """A table, one row per SOMP step: the atom, its coefficient norm, the EVR, and the
        logit-lens token of the same rank with its mean logit."""
        import pandas as pd

        k = len(self.pursuit)
        return pd.DataFrame(
            {
                "step": range(1, k + 1),
                "SOMP atom": [_token(s) for s in self.pursuit.labels],
                "coefficient norm": [round(float(v), 3) for v in self.pursuit.coefficient_norms],
                "EVR": [round(float(v), 3) for v in self.pursuit.evr],
                "logit lens token": [_token(s) for s in self.lens_labels[:k]] + [""] * max(0, k - len(self.lens_labels)),
                "mean logit": [round(float(v), 3) for v in self.lens_logits[:k]] + [None] * max(0, k - len(self.lens_labels)),
            }
        )

    def prompts_frame(self):
        """A table of :attr:`prompts` and their output norms."""
        import pandas as pd

        return pd.DataFrame({"prompt": self.prompts, "‖x‖": [round(float(v), 3) for v in self.prompt_norms]})


class HeadExplorer(_Interactive):
    """Pick a layer and a head; see what it writes.

    Parameters
    ----------
    acts : HeadActivations
        Recorded with ``store="samples"`` (the explorer needs each prompt's output);
        of a per-token recording (``pool=None``) it lists tokens rather than prompts.
    dictionary : Dictionary or Tensor ``[v, d_model]``
        Atoms to describe heads with, usually the full unembedding dictionary.
    n_atoms : int, default 10
        SOMP steps (and logit-lens tokens) shown.
    n_prompts : int, default 5
        Prompts listed, those with the largest output norm ``||x_i||`` for the head
        (at most the number recorded).
    head : (layer, head), optional
        The head shown first (default: the first recorded).
    ranking : HeadRanking, optional
        Adds a drop-down of its 20 best heads to the widget.
    dtype : torch.dtype, default torch.float32
        Precision of the pursuit (float32 keeps the widget responsive).

    Notes
    -----
    The SOMP atoms are those of :func:`hp_mini.somp` on the head's outputs ``X`` ``[n, d_model]``
    (centred, L1 criterion), in selection order. The logit-lens tokens are the atoms with the
    largest ``d_j . mean_i(x_i)``: the logit lens of the head's mean output
    (:func:`hp_mini.read.lens.logit_lens`).

    Raises
    ------
    TypeError
        ``acts`` is not :class:`~hp_mini.HeadActivations`, or a count is not an integer.
    ValueError
        Activations without per-prompt outputs, a dictionary that is empty or of another
        width, ``n_atoms`` outside 1 .. the dictionary's size, or a head not recorded.
    """

    def __init__(
        self,
        acts: HeadActivations,
        dictionary: Dictionary | torch.Tensor,
        *,
        n_atoms: int = 10,
        n_prompts: int = 5,
        head: Head | None = None,
        ranking: HeadRanking | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self._lens = logit_lens(acts, dictionary)  # checks both
        if acts.z is None:
            raise ValueError("the explorer needs per-prompt outputs: record with store='samples'")
        self.acts = acts
        self.dictionary = self._lens.dictionary
        n_atoms = check_count(n_atoms, "n_atoms")
        if n_atoms > len(self.dictionary):
            raise ValueError(f"n_atoms must be between 1 and {len(self.dictionary)}, got {n_atoms}")
        self.n_atoms = n_atoms
        self.n_prompts = min(check_count(n_prompts, "n_prompts", minimum=0), acts.n_prompts)
        self.ranking = ranking
        self.dtype = dtype
        self.head: Head = tuple(head) if head is not None else acts.heads[0]  # type: ignore[assignment]
        if self.head not in set(acts.heads):
            raise ValueError(f"{head_label(*self.head)} was not recorded")
        self._views: dict[Head, HeadView] = {}

    def __repr__(self) -> str:
        return f"HeadExplorer({head_label(*self.head)}, {self.acts.n_prompts} prompts, {len(self.dictionary)} atoms)"

    # -- computation --------------------------------------------------------- #
    def view(self, layer: int, head: int) -> HeadView:
        """Compute (once) what the explorer shows for head ``(layer, head)``."""
        key = (int(layer), int(head))
        if key not in self._views:
            X = self.acts.head(*key).float()  # [n, d_model]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # early stop on a zero residual is shown
                result = somp(X, self.dictionary, n_atoms=self.n_atoms, dtype=self.dtype)
            lens_labels, lens_logits = self._lens.top(*key, self.n_atoms)
            loud = torch.topk(X.norm(dim=1), self.n_prompts)
            self._views[key] = HeadView(
                head=key,
                pursuit=result,
                lens_labels=lens_labels,
                lens_logits=lens_logits,
                prompts=[self._row_name(int(i)) for i in loud.indices],
                prompt_norms=loud.values,
            )
        return self._views[key]

    def _row_name(self, i: int) -> str:
        """Row ``i`` of the recording: its prompt, and for a per-token recording the token's position."""
        prompts, positions = self.acts.prompts, self.acts.positions
        if positions is None:
            return prompts[i] if prompts else f"prompt {i}"
        p, t = positions[i].tolist()
        return f"{prompts[p] if prompts else f'prompt {p}'} (token {t})"

    @property
    def current(self) -> HeadView:
        """What the explorer shows for the selected head."""
        return self.view(*self.head)

    def select(self, layer: int, head: int) -> HeadView:
        """Show head ``(layer, head)``; moves the widget's sliders too."""
        key = (int(layer), int(head))
        if key not in set(self.acts.heads):
            raise ValueError(f"{head_label(*key)} was not recorded")
        self.head = key
        if self._ui is not None:
            self._layer.value, self._head.value = key
            self._refresh()
        return self.current

    # -- static rendering ---------------------------------------------------- #
    def static(self):
        """The current head as a matplotlib figure: SOMP atoms, logit-lens tokens, EVR curve."""
        import matplotlib.pyplot as plt

        v = self.current
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.1]})
        k = len(v.pursuit)
        ax = axes[0]
        ax.barh(range(k), v.pursuit.coefficient_norms.float().numpy(), color="tab:blue")
        ax.set_yticks(range(k), [_mpl_text(_token(s)) for s in v.pursuit.labels])
        ax.invert_yaxis()
        ax.set_xlabel("coefficient norm")
        ax.set_title("SOMP atoms (selection order)")
        ax = axes[1]
        ax.barh(range(len(v.lens_labels)), v.lens_logits.float().numpy(), color="tab:orange")
        ax.set_yticks(range(len(v.lens_labels)), [_mpl_text(_token(s)) for s in v.lens_labels])
        ax.invert_yaxis()
        ax.set_xlabel("mean logit")
        ax.set_title("logit lens of the mean output")
        ax = axes[2]
        evr = v.pursuit.evr.float().numpy()
        ax.plot(range(1, k + 1), evr, marker="o", color="tab:green")
        # the curve's own scale (EVR of a single head is often a few percent), at most 0 .. 1
        ax.set_ylim(0, min(1.0, max(0.05, 1.15 * float(evr.max()) if k else 0.05)))
        ax.set_xlabel("SOMP step")
        ax.set_ylabel("explained variance ratio")
        ax.set_title("EVR curve")
        ax.grid(alpha=0.3)
        fig.suptitle(f"Head {v.label}", fontweight="bold")
        fig.tight_layout()
        return fig

    def static_html(self) -> str:
        v = self.current
        evr = float(v.pursuit.evr[-1]) if len(v.pursuit) else 0.0
        return (
            '<div class="hp-mini-widget hp-mini-explorer">'
            + figure_html(self.static(), alt=f"Head {v.label}: SOMP atoms, logit-lens tokens and EVR curve")
            + f"<p>Head <b>{v.label}</b>: EVR {evr:.3f} after {len(v.pursuit)} SOMP steps over "
            f"its dictionary of {len(self.dictionary):,} atoms. "
            "The prompts on which it writes the most:</p>"
            + table_html(v.prompts_frame())
            + "</div>"
        )

    # -- widget -------------------------------------------------------------- #
    def _build(self):
        import ipywidgets as w

        layers = self.acts.layers
        self._layer = w.SelectionSlider(options=layers, value=self.head[0], description="layer", continuous_update=False)
        self._head = w.IntSlider(value=self.head[1], min=0, max=self.acts.n_heads - 1, description="head", continuous_update=False)
        self._output = w.HTML(value=self.static_html())
        controls = [self._layer, self._head]
        if self.ranking is not None:
            options = [("—", None)] + [
                (f"{i + 1}. {head_label(*h)} ({float(s):.3f})", tuple(h))
                for i, (h, s) in enumerate(zip(self.ranking.heads[:20], self.ranking.scores[:20]))
            ]
            self._ranked = w.Dropdown(options=options, value=None, description="ranked")
            self._ranked.observe(self._on_ranked, names="value")
            controls.append(self._ranked)
        self._layer.observe(self._on_slider, names="value")
        self._head.observe(self._on_slider, names="value")
        return w.VBox([w.HBox(controls), self._output])

    def _on_slider(self, change) -> None:
        self.head = (int(self._layer.value), int(self._head.value))
        self._refresh()

    def _on_ranked(self, change) -> None:
        if change["new"] is not None:
            self.select(*change["new"])

    def _refresh(self) -> None:
        self._output.value = self.static_html()


# --------------------------------------------------------------------------- #
# Editing playground
# --------------------------------------------------------------------------- #


class EditingPlayground(_Interactive):
    """Scale a concept's top heads and compare the generated text with the original.

    Parameters
    ----------
    model, tokenizer
        The model to edit and its tokenizer (see :func:`hp_mini.generate`).
    rankings : HeadRanking or mapping of concept name to HeadRanking
        Heads ranked for each concept (:func:`hp_mini.rank_heads`).
    prompts : list of str
        The prompts to continue (the widget lets you edit them, one per line).
    n_heads : int, default 3
        How many of the concept's top heads to scale.
    alpha : float, default -1.0
        The scale (``-1`` inverts the heads, ``0`` removes them, ``> 1`` amplifies them).
    max_new_tokens : int, default 24
    chat : bool, default True
        Wrap prompts in the tokenizer's chat template (instruction-tuned models).
    stop : str or sequence of str, optional
        End each text where one of these first appears (see :func:`hp_mini.generate`),
        e.g. ``"\n"`` to keep one answer of a few-shot prompt.
    alpha_range : (float, float), default (-3.0, 8.0)
        The slider's range.
    """

    def __init__(
        self,
        model,
        tokenizer,
        rankings: HeadRanking | Mapping[str, HeadRanking],
        prompts: Sequence[str],
        *,
        n_heads: int = 3,
        alpha: float = -1.0,
        max_new_tokens: int = 24,
        chat: bool = True,
        stop: str | Sequence[str] | None = None,
        alpha_range: tuple[float, float] = (-3.0, 8.0),
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.rankings = {"concept": rankings} if isinstance(rankings, HeadRanking) else dict(rankings)
        if not self.rankings:
            raise ValueError("give at least one ranking")
        self.concept = next(iter(self.rankings))
        self.prompts = [p for p in prompts if p.strip()]
        if not self.prompts:
            raise ValueError("give at least one prompt")
        self.n_heads = n_heads
        self.alpha = float(alpha)
        self.max_new_tokens = max_new_tokens
        self.chat = chat
        self.stop = stop
        self.alpha_range = alpha_range
        self._cache: dict[tuple, str] = {}
        self._check()

    def __repr__(self) -> str:
        return f"EditingPlayground({self.concept!r}, {self.n_heads} heads, alpha={self.alpha:g}, {len(self.prompts)} prompts)"

    def _check(self) -> None:
        if self.concept not in self.rankings:
            raise ValueError(f"no ranking for {self.concept!r}; known: {', '.join(self.rankings)}")
        n = len(self.rankings[self.concept])
        if not 1 <= check_count(self.n_heads, "n_heads") <= n:
            raise ValueError(f"n_heads must be between 1 and {n}, got {self.n_heads}")

    @property
    def heads(self) -> list[Head]:
        """The heads the current settings scale."""
        return list(self.rankings[self.concept].heads[: self.n_heads])

    def _generate(self, prompts: list[str], edit: tuple) -> list[str]:
        todo = [p for p in prompts if (p, edit) not in self._cache]
        if todo:
            edits = dict(edit)
            with scale_heads(self.model, edits):
                generated = generate(self.model, self.tokenizer, todo, max_new_tokens=self.max_new_tokens,
                                     chat=self.chat, stop=self.stop)
            for p, t in zip(todo, generated):
                self._cache[(p, edit)] = t
        return [self._cache[(p, edit)] for p in prompts]

    def run(self):
        """Generate (or reuse) the texts for the current settings; a table, one row per prompt."""
        import pandas as pd

        self._check()
        edit = tuple((h, self.alpha) for h in self.heads)
        original = self._generate(self.prompts, ())
        edited = self._generate(self.prompts, edit)
        return pd.DataFrame({"prompt": self.prompts, "without edit": original, "with edit": edited})

    def static(self):
        """The current comparison as a pandas table (``prompt``, ``without edit``, ``with edit``)."""
        return self.run()

    def static_html(self) -> str:
        frame = self.run()
        labels = ", ".join(head_label(*h) for h in self.heads)
        caption = f"{self.concept}: the top {self.n_heads} heads scaled by alpha = {self.alpha:g} ({labels})"
        return f'<div class="hp-mini-widget hp-mini-playground">{table_html(frame, caption=caption)}</div>'

    def _build(self):
        import ipywidgets as w

        style = {"description_width": "initial"}
        self._concept = w.Dropdown(options=list(self.rankings), value=self.concept, description="concept")
        n_max = min(64, max(len(r) for r in self.rankings.values()))
        self._n = w.IntSlider(value=self.n_heads, min=1, max=n_max, description="heads", continuous_update=False)
        lo, hi = self.alpha_range
        self._alpha = w.FloatSlider(value=self.alpha, min=lo, max=hi, step=0.5, description="alpha", continuous_update=False)
        self._prompts = w.Textarea(value="\n".join(self.prompts), description="prompts (one a line)",
                                   layout=w.Layout(width="100%", height="6em"), style=style, continuous_update=False)
        self._output = w.HTML(value=self.static_html())
        for control in (self._concept, self._n, self._alpha, self._prompts):
            control.observe(self._on_change, names="value")
        return w.VBox([w.HBox([self._concept, self._n, self._alpha]), self._prompts, self._output])

    def _on_change(self, change) -> None:
        self.concept = self._concept.value
        self.n_heads = min(int(self._n.value), len(self.rankings[self.concept]))
        self.alpha = float(self._alpha.value)
        prompts = [p for p in self._prompts.value.splitlines() if p.strip()]
        if prompts:
            self.prompts = prompts
        self._output.value = '<p><i>generating…</i></p>'
        try:
            self._output.value = self.static_html()
        except Exception as err:  # show the problem in the widget rather than losing it in a log
            self._output.value = error_html(err)


# --------------------------------------------------------------------------- #
# Concept builder
# --------------------------------------------------------------------------- #


def _split_words(text: str) -> list[str]:
    return [w.strip() for w in re.split(r"[,\n;]", text) if w.strip()]


class ConceptBuilder(_Interactive):
    """Type words; see the tokens a concept dictionary gets from them, and what it drops.

    Parameters
    ----------
    model, tokenizer
        The model whose unembedding gives the atoms, and its tokenizer.
    words : list of str or str, default "colours"
        The words, or the name of a shipped word list (:func:`hp_mini.concept_words`).
    multi_token : {"first", "drop"}, default "first"
        The policy for words that split into several tokens (see
        :func:`hp_mini.unembedding_dictionary`).
    """

    def __init__(self, model, tokenizer, words: Sequence[str] | str = "colours", *,
                 multi_token: Literal["first", "drop"] = "first") -> None:
        self.model, self.tokenizer = model, tokenizer
        self.words = concept_words(words) if isinstance(words, str) else [w for w in words if w.strip()]
        self.multi_token = multi_token
        self._dictionary: Dictionary | None = None
        self._key: tuple | None = None

    def __repr__(self) -> str:
        return f"ConceptBuilder({len(self.words)} words, multi_token={self.multi_token!r})"

    @property
    def dictionary(self) -> Dictionary:
        """The concept dictionary of the current words (rebuilt when they change)."""
        key = (tuple(self.words), self.multi_token)
        if self._key != key:
            if not self.words:
                raise ValueError("type at least one word")
            self._dictionary = unembedding_dictionary(self.model, self.tokenizer, self.words, multi_token=self.multi_token)
            self._key = key
        assert self._dictionary is not None
        return self._dictionary

    def frame(self):
        """One row per word: the tokens it gave the dictionary, and what was dropped and why."""
        import pandas as pd

        d = self.dictionary
        tok = getattr(self.tokenizer, "tokenizer", self.tokenizer)
        owner = {int(t): w for t, w in zip(d.token_ids.tolist(), d.words or [])}
        labels = {int(t): lab for t, lab in zip(d.token_ids.tolist(), d.labels)}
        kept_first = set(d.kept_first)
        rows = []
        typed: set[str] = set()
        for word in self.words:
            word = word.strip()
            if word in typed:
                rows.append({"word": word, "status": "duplicate", "tokens in the dictionary": "",
                             "dropped variants (why)": "typed twice: its tokens are in the dictionary once"})
                continue
            typed.add(word)
            got, dropped = [], []
            for variant in (" " + word, word):
                if variant in d.multi_token:
                    pieces = d.multi_token[variant]
                    if variant in kept_first:
                        first = tok.encode(variant, add_special_tokens=False)[0]
                        got.append(f"{_token(labels.get(first, pieces[0]))} (first of {len(pieces)} tokens)")
                        continue
                    why = ("the policy 'drop' drops words of several tokens" if self.multi_token == "drop"
                           else f"its first piece {_token(pieces[0])} is too short to stand for the word")
                    dropped.append(f"{_token(variant)} -> {' + '.join(_token(p) for p in pieces)}: {why}")
                    continue
                ids = tok.encode(variant, add_special_tokens=False)
                if len(ids) != 1:
                    continue
                t = int(ids[0])
                if owner.get(t) == word:
                    got.append(_token(labels[t]))
                elif t in owner:
                    dropped.append(f"{_token(variant)}: the same token as {owner[t]!r}, kept once")
            status = "missing" if word in d.missing else ("kept" if got else "duplicate")
            rows.append({"word": word, "status": status, "tokens in the dictionary": ", ".join(got),
                         "dropped variants (why)": "; ".join(dropped)})
        return pd.DataFrame(rows, columns=["word", "status", "tokens in the dictionary", "dropped variants (why)"])

    def summary(self) -> str:
        """One sentence: the atoms, the words that gave them, those missing, and the variants
        kept by their first token."""
        d = self.dictionary
        distinct = list(dict.fromkeys(self.words))
        twice = len(self.words) - len(distinct)
        missing = list(dict.fromkeys(d.missing))
        first = len(set(d.kept_first))
        typed = f" ({twice} typed twice)" if twice else ""
        return (f"{_count(len(d), 'atom')} from {len(distinct) - len(missing)} of "
                f"{_count(len(distinct), 'distinct word')}{typed}; "
                f"{_count(len(missing), 'word')} missing ({', '.join(missing) or 'none'}); "
                f"{_count(first, 'variant')} represented by the first of its tokens.")

    def static(self):
        """The current words as a pandas table (see :meth:`frame`)."""
        return self.frame()

    def static_html(self) -> str:
        return (f'<div class="hp-mini-widget hp-mini-concept"><p>{html.escape(self.summary())}</p>'
                f"{table_html(self.frame())}</div>")

    def _build(self):
        import ipywidgets as w

        names = concept_names()
        self._preset = w.Dropdown(options=["(typed)"] + names, value="(typed)", description="word list")
        self._words = w.Textarea(value=", ".join(self.words), description="words",
                                 layout=w.Layout(width="100%", height="5em"), continuous_update=False)
        self._policy = w.ToggleButtons(options=["first", "drop"], value=self.multi_token, description="multi-token")
        self._output = w.HTML(value=self.static_html())
        self._preset.observe(self._on_preset, names="value")
        self._words.observe(self._on_change, names="value")
        self._policy.observe(self._on_change, names="value")
        return w.VBox([w.HBox([self._preset, self._policy]), self._words, self._output])

    def _on_preset(self, change) -> None:
        if change["new"] in concept_names():
            self._words.value = ", ".join(concept_words(change["new"]))  # fires _on_change

    def _on_change(self, change) -> None:
        self.words = _split_words(self._words.value)
        self.multi_token = self._policy.value
        try:
            self._output.value = self.static_html()
        except Exception as err:
            self._output.value = error_html(err)
