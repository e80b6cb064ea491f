"""Rank attention heads for a concept, and draw random control sets.

:func:`pursue_heads` runs SOMP on every recorded head; :func:`rank_heads` scores
each head for a dictionary (by the EVR its SOMP reaches, or by the mean logit
the logit lens gives) and sorts them; :func:`random_heads_like` draws the
paper's control: random heads with the same count per layer as a selection,
disjoint from it.

:meth:`HeadRanking.skip_layers` leaves the first layers out of a ranking, and
:func:`evr_grid` lays the SOMP scores of every head out by layer and head.

Heads are processed in batches that share every dictionary product, and each
head is handled in its ``d_head`` coordinates (``X = Z W_O^T``), so the only
``d_model``-wide work is the dictionary products themselves. With
``criterion="l2"`` only the heads' second moments are used, so activations
recorded with ``record_heads(..., store="moments")`` are enough.

Example
-------
>>> import hp_mini
>>> model, tokenizer = hp_mini.load_model()                                    # doctest: +SKIP
>>> acts = hp_mini.record_heads(model, tokenizer, texts)                       # doctest: +SKIP
>>> countries = hp_mini.unembedding_dictionary(model, tokenizer, hp_mini.concept_words("countries"))  # doctest: +SKIP
>>> ranking = hp_mini.rank_heads(acts, countries, n_atoms=20)                   # doctest: +SKIP
>>> ranking.to_frame().head(3)                                                 # doctest: +SKIP
>>> controls = hp_mini.random_heads_like(ranking.top(8), acts)                 # doctest: +SKIP
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from hp_mini.checks import check_count
from hp_mini.model.sites import Head, head_label
from hp_mini.pursuit import FactoredSignals, PursuitResult, somp_factored
from hp_mini.rank.compare import RankingComparison, jaccard, spearman
from hp_mini.read.dictionary import Dictionary
from hp_mini.read.lens import check_dictionary, logit_lens
from hp_mini.record.activations import HeadActivations

__all__ = ["check_ranking_inputs", "evr_grid", "head_signals", "HeadRanking", "pursue_heads", "rank_heads"]


def _bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="head", leave=False)


def pursue_heads(
    acts: HeadActivations,
    dictionary: Dictionary | torch.Tensor,
    *,
    n_atoms: int = 50,
    criterion: Literal["l1", "l2"] = "l1",
    center: bool = True,
    heads: Sequence[Head] | None = None,
    batch_heads: int = 90,
    dtype: torch.dtype = torch.float64,
    out_dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> dict[Head, PursuitResult]:
    """Run :func:`somp` on every recorded head's contributions.

    Parameters
    ----------
    acts : HeadActivations
        From :func:`record_heads`. ``criterion="l1"`` needs the per-prompt
        outputs (``store="samples"``); ``"l2"`` also runs from
        ``store="moments"``.
    dictionary : Dictionary or Tensor ``[v, d_model]``
        The atoms.
    n_atoms : int, default 50
        SOMP steps per head.
    criterion : {"l1", "l2"}, default "l1"
        See :func:`somp`.
    center : bool, default True
        Centre each head's contributions over the prompts.
    heads : list of (layer, head), optional
        Only these heads (default: all, layer-major).
    batch_heads : int, default 90
        Heads advanced together; they share every dictionary product.
    dtype : torch.dtype, default torch.float64
        Precision of the computation.
    out_dtype : torch.dtype, default torch.float32
        Precision of the returned EVR and coefficients (float64 keeps the
        EVR to about 1e-16).
    progress : bool, default True
        Show a progress bar over heads.

    Returns
    -------
    dict of (layer, head) to PursuitResult
        Same as ``somp(acts.head(layer, head), dictionary, ...)`` for each head.
        ``coefficients`` is None for activations holding moments only.
    """
    if criterion not in ("l1", "l2"):
        raise ValueError(f"criterion must be 'l1' or 'l2', got {criterion!r}")
    dic = check_dictionary(dictionary, acts.d_model, finite=False)  # somp_factored checks the atoms once per dictionary
    if criterion == "l1" and acts.z is None:
        raise ValueError(
            "criterion='l1' needs every prompt's head outputs, but these activations hold only moments "
            "(store='moments'); use criterion='l2' or record with store='samples'"
        )
    if batch_heads < 1:
        raise ValueError(f"batch_heads must be at least 1, got {batch_heads}")
    todo = list(acts.heads) if heads is None else [tuple(h) for h in heads]

    results: dict[Head, PursuitResult] = {}
    bar = _bar(len(todo), progress and bool(todo), f"SOMP ({criterion})")
    try:
        for start in range(0, len(todo), batch_heads):
            chunk = todo[start : start + batch_heads]
            found = somp_factored(
                [head_signals(acts, layer, head) for layer, head in chunk],
                dic,
                n_atoms=n_atoms,
                criterion=criterion,
                center=center,
                dtype=dtype,
                out_dtype=out_dtype,
            )
            results.update(zip(chunk, found))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return results


def head_signals(acts: HeadActivations, layer: int, head: int) -> FactoredSignals:
    """One head's contributions as factored signals for :func:`hp_mini.somp_factored`.

    Parameters
    ----------
    acts : HeadActivations
        From :func:`record_heads`, with samples or moments only.
    layer, head : int
        The head.

    Returns
    -------
    FactoredSignals
        ``W`` is the head's ``W_O`` slice ``[d_model, d_head]``; ``Z`` its pooled
        outputs ``[n, d_head]`` when the samples were kept, else its count, mean
        and scatter matrix. Named ``L{layer}H{head}``.
    """
    name = head_label(layer, head)
    if acts.z is not None:
        Z, W = acts.factors(layer, head)
        return FactoredSignals(W, Z, name=name)
    n, mean, scatter = acts.head_moments(layer, head)
    W = acts.W_O[acts.layers.index(layer), head]
    return FactoredSignals(W, n=n, mean=mean, scatter=scatter, name=name)


def check_ranking_inputs(
    acts: HeadActivations,
    dictionary: Dictionary | torch.Tensor,
    *,
    n_atoms: int | None = None,
) -> tuple[Dictionary, int | None]:
    """Check activations, a dictionary and a number of SOMP steps before ranking heads.

    :func:`rank_heads` calls it first; so does
    :func:`hp_mini.rank.distributed.rank_heads_distributed`, and a program can call
    it before any costly work.

    Parameters
    ----------
    acts : HeadActivations
        From :func:`record_heads`, with samples or moments only.
    dictionary : Dictionary or Tensor ``[v, d_model]``
        The atoms.
    n_atoms : int, optional
        SOMP steps per head; None when no pursuit will be run.

    Returns
    -------
    dictionary : Dictionary
        The dictionary as a :class:`Dictionary`.
    n_atoms : int or None
        ``n_atoms``, capped at the dictionary's size (with a ``RuntimeWarning``).

    Raises
    ------
    ValueError
        Fewer than 2 prompts, NaN or infinite values in the activations or the
        dictionary, an empty dictionary, a dictionary of another width, or
        ``n_atoms`` below 1.
    TypeError
        ``n_atoms`` is not an integer.
    """
    dic = check_dictionary(dictionary, acts.d_model)
    n = acts.n_prompts
    if n < 2:
        raise ValueError(
            f"ranking needs at least 2 prompts, got {n}: heads are ranked by how "
            "their contributions vary (SOMP) or by their mean logit (logit lens) over many prompts; "
            "record more prompts"
        )
    parts = {"head outputs (acts.z)": acts.z, "output projections (acts.W_O)": acts.W_O}
    if acts.moments is not None:
        parts["moments (acts.moments.sum)"] = acts.moments.sum
        parts["moments (acts.moments.second)"] = acts.moments.second
    for what, t in parts.items():
        if t is not None and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"the activations' {what} contain {bad} NaN or infinite values; "
                "check the model's outputs (a half-precision overflow?) and record again"
            )
    if n_atoms is None:
        return dic, None
    requested = check_count(n_atoms, "n_atoms")
    if requested > len(dic):
        warnings.warn(
            f"n_atoms={requested} is more than the {len(dic)} atoms of the dictionary; using {len(dic)}",
            RuntimeWarning,
            stacklevel=3,
        )
        requested = len(dic)
    return dic, requested


@dataclass
class HeadRanking:
    """Heads sorted from best to worst for a dictionary.

    Attributes
    ----------
    heads : list of (layer, head)
        Best first.
    scores : Tensor ``[n_heads]``
        Their scores, in the same order.
    method : str
        ``"somp"`` (score: EVR after ``n_atoms`` steps), ``"logit_lens"``
        (score: mean logit given to the dictionary's tokens) or ``"specificity"``
        (score: the EVR minus a control dictionary's).
    results : dict of (layer, head) to PursuitResult, or None
        The pursuit of every head (``method="somp"``).
    """

    heads: list[Head]
    scores: torch.Tensor
    method: str
    results: dict[Head, PursuitResult] | None = None

    @classmethod
    def from_pursuit(
        cls, results: dict[Head, PursuitResult], *, dtype: torch.dtype = torch.float32
    ) -> HeadRanking:
        """Rank pursued heads by the EVR after their last step (0 for a head with none).

        Parameters
        ----------
        results : dict of (layer, head) to PursuitResult
            From :func:`pursue_heads`, in the order that settles ties.
        dtype : torch.dtype, default torch.float32
            Precision in which the scores are compared and returned.

        Returns
        -------
        HeadRanking
            With ``method="somp"``; heads with equal scores keep their order.
        """
        heads = list(results)
        scores = torch.tensor([float(results[h].evr[-1]) if len(results[h]) else 0.0 for h in heads], dtype=dtype)
        order = torch.argsort(scores, descending=True, stable=True)
        return cls([heads[int(i)] for i in order], scores[order], "somp", results)

    def __len__(self) -> int:
        return len(self.heads)

    def top(self, k: int) -> list[Head]:
        """The ``k`` best heads."""
        if not 0 <= k <= len(self.heads):
            raise ValueError(f"k must be between 0 and {len(self.heads)}, got {k}")
        return self.heads[:k]

    def skip_layers(self, n_layers: int) -> HeadRanking:
        """The same ranking without the heads of layers ``0 .. n_layers - 1``.

        Parameters
        ----------
        n_layers : int
            How many first layers to leave out (0 keeps every head), e.g. the
            layers whose heads reach a high EVR with any dictionary.

        Returns
        -------
        HeadRanking
            The other heads, in the same order, with their scores, method and
            pursuit results.

        Raises
        ------
        TypeError
            ``n_layers`` is not an integer.
        ValueError
            ``n_layers`` is negative.

        Examples
        --------
        >>> import torch
        >>> r = HeadRanking([(0, 1), (2, 0), (1, 1)], torch.tensor([0.9, 0.5, 0.2]), "somp")
        >>> r.skip_layers(1).heads, r.skip_layers(1).top(1)
        ([(2, 0), (1, 1)], [(2, 0)])
        """
        n_layers = check_count(n_layers, "n_layers", minimum=0)
        keep = [i for i, (layer, _) in enumerate(self.heads) if layer >= n_layers]
        heads = [self.heads[i] for i in keep]
        results = None if self.results is None else {h: self.results[h] for h in heads if h in self.results}
        return HeadRanking(heads, self.scores[torch.tensor(keep, dtype=torch.long)], self.method, results)

    def grid(self, n_layers: int | None = None, n_heads: int | None = None, *,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The scores as a ``[n_layers, n_heads]`` map, 0 where a head is not ranked.

        ``n_layers`` and ``n_heads`` default to one more than the largest
        ranked layer and head index. Raises ValueError when a ranked head lies
        outside the given sizes.
        """
        layers = [layer for layer, _ in self.heads]
        indices = [head for _, head in self.heads]
        n_layers = (max(layers, default=-1) + 1) if n_layers is None else operator.index(n_layers)
        n_heads = (max(indices, default=-1) + 1) if n_heads is None else operator.index(n_heads)
        if any(l >= n_layers for l in layers) or any(h >= n_heads for h in indices):
            raise ValueError(f"the ranking has heads outside a {n_layers} x {n_heads} grid: give the model's "
                             "numbers of layers and heads per layer")
        out = torch.zeros(n_layers, n_heads, dtype=dtype)
        if self.heads:
            out[torch.tensor(layers), torch.tensor(indices)] = self.scores.to(dtype)
        return out

    def to_frame(self, *, n_labels: int = 5):
        """A table, best first: rank, ``L{layer}H{head}`` label, layer, head, score
        and, for SOMP, the first ``n_labels`` atoms by coefficient norm."""
        import pandas as pd

        frame = pd.DataFrame(
            {
                "rank": range(1, len(self.heads) + 1),
                "head": [head_label(layer, head) for layer, head in self.heads],
                "layer": [layer for layer, _ in self.heads],
                "index": [head for _, head in self.heads],
                "score": self.scores.tolist(),
            }
        )
        if self.results is not None and n_labels:
            frame["atoms"] = [", ".join(self.results[h].ordered_labels[:n_labels]) for h in self.heads]
        return frame.set_index("rank")

    def __repr__(self) -> str:
        best = ", ".join(f"{head_label(*h)} ({float(s):.3f})" for h, s in zip(self.heads[:3], self.scores[:3]))
        return f"HeadRanking(method={self.method!r}, {len(self)} heads, best: {best})"

    def compare(
        self, other: HeadRanking, *, k: int = 10, layers: Sequence[int] | None = None
    ) -> RankingComparison:
        """How far two rankings of the same heads agree.

        Parameters
        ----------
        other : HeadRanking
            Another ranking of the same heads (another method, dictionary or
            set of prompts).
        k : int, default 10
            Size of the top lists compared.
        layers : list of int, optional
            Compare only the heads of these layers (for instance all but the
            first); default all.

        Returns
        -------
        RankingComparison
            The heads in both top-``k`` lists, their count and Jaccard index,
            and the Spearman correlation of the two scores over all the heads
            compared (ties get their average rank).

        Raises
        ------
        TypeError
            ``other`` is not a :class:`HeadRanking`, or ``k`` is not an integer.
        ValueError
            The rankings hold different heads, ``layers`` keeps fewer than 2
            heads, or ``k`` is not between 1 and the number of heads compared.

        Examples
        --------
        >>> import torch
        >>> a = HeadRanking([(0, 0), (0, 1), (1, 0), (1, 1)], torch.tensor([4.0, 3, 2, 1]), "somp")
        >>> b = HeadRanking([(0, 1), (1, 1), (0, 0), (1, 0)], torch.tensor([4.0, 3, 2, 1]), "logit_lens")
        >>> c = a.compare(b, k=2)
        >>> c.shared, c.overlap, round(c.jaccard, 3), round(c.spearman, 3)
        ([(0, 1)], 1, 0.333, 0.0)
        """
        if not isinstance(other, HeadRanking):
            raise TypeError(f"compare takes another HeadRanking, got {type(other).__name__}")
        if set(self.heads) != set(other.heads):
            missing = sorted(set(self.heads) ^ set(other.heads))[:5]
            raise ValueError(
                f"the two rankings hold different heads (e.g. {[head_label(*h) for h in missing]}); "
                "rank the same recorded heads with both"
            )
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an integer, got {k!r}")
        keep = None if layers is None else {int(layer) for layer in layers}
        mine = [(h, float(s)) for h, s in zip(self.heads, self.scores) if keep is None or h[0] in keep]
        theirs = [(h, float(s)) for h, s in zip(other.heads, other.scores) if keep is None or h[0] in keep]
        if len(mine) < 2:
            raise ValueError(f"layers={layers!r} keeps {len(mine)} head(s); a comparison needs at least 2")
        if not 1 <= k <= len(mine):
            raise ValueError(f"k must be between 1 and {len(mine)} (the heads compared), got {k}")
        top_a, top_b = [h for h, _ in mine[:k]], [h for h, _ in theirs[:k]]
        shared = sorted(set(top_a) & set(top_b))
        heads = [h for h, _ in mine]
        score_b = dict(theirs)
        rho = spearman(
            torch.tensor([s for _, s in mine], dtype=torch.float64),
            torch.tensor([score_b[h] for h in heads], dtype=torch.float64),
        )
        return RankingComparison(k, len(heads), top_a, top_b, shared, jaccard(top_a, top_b), rho)


def rank_heads(
    acts: HeadActivations,
    dictionary: Dictionary | torch.Tensor,
    *,
    method: Literal["somp", "logit_lens", "specificity"] = "somp",
    n_atoms: int = 50,
    criterion: Literal["l1", "l2"] = "l1",
    center: bool = True,
    batch_heads: int = 90,
    dtype: torch.dtype = torch.float64,
    out_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    control: Dictionary | torch.Tensor | None = None,
) -> HeadRanking:
    """Rank every recorded head for a dictionary, best first.

    Parameters
    ----------
    acts : HeadActivations
        From :func:`record_heads`.
    dictionary : Dictionary or Tensor ``[v, d_model]``
        Usually a concept dictionary (:func:`unembedding_dictionary` with words).
    method : {"somp", "logit_lens"}, default "somp"
        ``"somp"``: the score is the EVR after ``n_atoms`` SOMP steps (Head
        Pursuit). ``"logit_lens"``: the mean, over prompts and over the
        dictionary's atoms, of the logit ``d_j . x_h`` the head's contribution
        gives (uncentred): ``logit_lens(acts, dictionary).scores`` of
        :func:`hp_mini.read.lens.logit_lens`. ``"specificity"``: the EVR with
        ``dictionary`` minus the EVR with ``control`` (a dictionary of the same
        size that holds no concept, e.g. :func:`~hp_mini.read.dictionary.random_atoms`),
        both after ``n_atoms`` SOMP steps: how much more the concept explains a head
        than any tokens would. Heads that any dictionary explains well (the
        generic heads of the first layers) fall to the bottom.
    n_atoms : int, default 50
        SOMP steps (capped at the dictionary's size, with a warning).
    criterion : {"l1", "l2"}, default "l1"
        SOMP criterion.
    center, batch_heads, dtype, out_dtype
        Passed on to :func:`pursue_heads`; ``out_dtype`` is also the
        precision in which the scores are sorted and returned.
    progress : bool, default True
        Show a progress bar over heads.
    control : Dictionary or Tensor ``[v, d_model]``, optional
        The control dictionary of ``method="specificity"`` (required there,
        refused elsewhere); it must have as many atoms as ``dictionary``.

    Returns
    -------
    HeadRanking
        With ``method="specificity"``, ``results`` holds the pursuits with
        ``dictionary`` (the control's are not kept).

    Raises
    ------
    ValueError
        Fewer than 2 prompts, an empty dictionary, a dictionary of another
        width, or NaN or infinite values in the activations or the dictionary
        (see :func:`check_ranking_inputs`); ``method="specificity"`` without a
        ``control`` or with one of another size; a ``control`` with another method.
    """
    if method not in ("somp", "logit_lens", "specificity"):
        raise ValueError(f"method must be 'somp', 'logit_lens' or 'specificity', got {method!r}")
    if (control is None) == (method == "specificity"):
        raise ValueError(
            "method='specificity' needs control=, a dictionary of as many atoms that holds no concept "
            "(e.g. hp_mini.read.dictionary.random_atoms(unembedding, size))"
            if control is None else f"control= is only used by method='specificity', not by method={method!r}"
        )
    dic, n_atoms = check_ranking_inputs(acts, dictionary, n_atoms=n_atoms if method != "logit_lens" else None)
    ctl = _check_control(acts, dic, control) if method == "specificity" else None
    if method != "logit_lens":
        options = dict(n_atoms=n_atoms, criterion=criterion, center=center, batch_heads=batch_heads, dtype=dtype,
                       out_dtype=out_dtype, progress=progress)
        ranking = HeadRanking.from_pursuit(pursue_heads(acts, dic, **options), dtype=out_dtype)
        return ranking if ctl is None else _specificity(acts, ranking, ctl, options)
    lens = logit_lens(acts, dic)
    heads = lens.heads
    scores = lens.scores.reshape(-1).to(out_dtype)  # layer-major, as lens.heads
    order = torch.argsort(scores, descending=True, stable=True)
    return HeadRanking([heads[int(i)] for i in order], scores[order], method, None)


def _check_control(acts: HeadActivations, dictionary: Dictionary, control) -> Dictionary:
    """The control dictionary of a specificity ranking, checked against the concept's."""
    try:
        ctl = check_dictionary(control, acts.d_model)  # the activations were checked by rank_heads
    except ValueError as err:
        raise ValueError(f"control: {err}") from None
    if ctl.atoms.shape[0] != dictionary.atoms.shape[0]:
        raise ValueError(
            f"control has {ctl.atoms.shape[0]} atoms and the dictionary {dictionary.atoms.shape[0]}: a specificity "
            "compares dictionaries of the same size (draw it with random_atoms(unembedding, size))"
        )
    return ctl


def _specificity(acts: HeadActivations, concept: HeadRanking, control: Dictionary, options: dict) -> HeadRanking:
    """Rank by the concept's EVR minus the control's, head by head."""
    evr = dict(zip(concept.heads, concept.scores.tolist()))
    base = HeadRanking.from_pursuit(pursue_heads(acts, control, **options), dtype=options["out_dtype"])
    heads = [h for h in acts.heads if h in evr]
    lost = dict(zip(base.heads, base.scores.tolist()))
    scores = torch.tensor([evr[h] - lost[h] for h in heads], dtype=torch.float64).to(options["out_dtype"])
    order = torch.argsort(scores, descending=True, stable=True)
    return HeadRanking([heads[int(i)] for i in order], scores[order], "specificity", concept.results)


def evr_grid(acts: HeadActivations, dictionary: Dictionary | torch.Tensor, *, n_atoms: int = 50,
             criterion: Literal["l1", "l2"] = "l1", center: bool = True, progress: bool = True) -> torch.Tensor:
    """The EVR that SOMP reaches on every recorded head, as a ``[layer, head]`` grid.

    The scores of :func:`rank_heads` (``method="somp"``) laid out by layer and
    head: the map to compare one dictionary with another (a concept against
    random tokens of the same size, say) layer by layer.

    Parameters
    ----------
    acts : HeadActivations
        From :func:`record_heads`.
    dictionary : Dictionary or Tensor ``[v, d_model]``
        The atoms.
    n_atoms : int, default 50
        SOMP steps per head, capped at the dictionary's size (with a
        ``RuntimeWarning`` pointing at the caller).
    criterion : {"l1", "l2"}, default "l1"
        SOMP criterion.
    center : bool, default True
        Centre each head's outputs over the prompts first.
    progress : bool, default True
        Show a progress bar over heads.

    Returns
    -------
    Tensor ``[n_layers, n_heads]``
        The EVR after ``n_atoms`` steps of head ``h`` of layer ``l`` at
        ``[l, h]``; rows of layers that were not recorded are 0.

    Raises
    ------
    ValueError, TypeError
        As :func:`rank_heads` (see :func:`check_ranking_inputs`).

    Examples
    --------
    >>> grid = evr_grid(acts, countries, n_atoms=20)                            # doctest: +SKIP
    >>> grid.mean(1)  # the mean EVR of each layer                             # doctest: +SKIP
    """
    dic, n_atoms = check_ranking_inputs(acts, dictionary, n_atoms=n_atoms)
    ranking = rank_heads(acts, dic, n_atoms=n_atoms, criterion=criterion, center=center, progress=progress)
    return ranking.grid(max(acts.layers) + 1, acts.n_heads)
