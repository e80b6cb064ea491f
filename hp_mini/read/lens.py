"""The logit lens of attention heads: what each head's mean write says in the vocabulary.

The logit lens reads a vector in the residual stream through the unembedding
(Nostalgebraist, 2020). For a head, the vector is its pooled contribution
``x_h = W_O^h z_h``; its mean over the prompts, dotted with an atom ``d_j``,
is the head's mean logit for that atom. :func:`logit_lens` reads every
recorded head at once and returns a :class:`LogitLens`: the mean logits
``[layers, heads, v]``, each head's top atoms, and the per-head score by which
``rank_heads(..., method="logit_lens")`` sorts the heads (the mean logit over
all the atoms). :func:`check_dictionary` checks a dictionary against the
activations it will read.

Example
-------
>>> import torch
>>> from hp_mini.read.dictionary import Dictionary
>>> from hp_mini.read.lens import logit_lens
>>> from hp_mini.record.activations import HeadActivations
>>> W_O = torch.eye(2).expand(1, 2, 2, 2)           # 1 layer, 2 heads writing z as is
>>> z = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]], [[[3.0, 0.0], [0.0, 4.0]]]])  # 2 prompts
>>> acts = HeadActivations(z, W_O, None, [5])
>>> lens = logit_lens(acts, Dictionary(torch.eye(2), ["a", "b"]))
>>> lens.logits[0]                                    # mean logits: layer 5, heads 0 and 1
tensor([[2., 0.],
        [0., 3.]], dtype=torch.float64)
>>> lens.top_atoms(1)
{(5, 0): ['a'], (5, 1): ['b']}
>>> lens.scores                                       # the mean over atoms, as rank_heads scores
tensor([[1.0000, 1.5000]], dtype=torch.float64)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from hp_mini.checks import check_count
from hp_mini.model.sites import Head, head_label
from hp_mini.read.dictionary import Dictionary, as_dictionary
from hp_mini.record.activations import HeadActivations

__all__ = ["LogitLens", "check_dictionary", "logit_lens"]


def check_dictionary(dictionary: Dictionary | torch.Tensor, d_model: int, *, finite: bool = True) -> Dictionary:
    """A dictionary as a :class:`Dictionary`, checked against heads that write ``d_model``-wide vectors.

    Parameters
    ----------
    dictionary : Dictionary or Tensor ``[v, d_model]``
        The atoms.
    d_model : int
        The width of the heads' writes (``acts.d_model``).
    finite : bool, default True
        Also refuse NaN or infinite atoms.

    Returns
    -------
    Dictionary

    Raises
    ------
    ValueError
        An empty dictionary, atoms of another width, or (with ``finite``) NaN
        or infinite atoms.
    """
    dic = as_dictionary(dictionary)
    if len(dic) == 0:
        raise ValueError(
            "the dictionary is empty: it has no atoms to read or rank the heads by "
            "(a concept dictionary whose words all went missing? see dictionary.missing)"
        )
    if dic.d_model != d_model:
        raise ValueError(f"the dictionary's atoms are {dic.d_model} wide but the heads write {d_model}-wide vectors")
    bad = int((~torch.isfinite(dic.atoms)).sum()) if finite else 0
    if bad:
        raise ValueError(f"the dictionary's atoms contain {bad} NaN or infinite values; rebuild the dictionary")
    return dic


@dataclass(frozen=True)
class LogitLens:
    """The logit lens of every recorded head in one dictionary, made by :func:`logit_lens`.

    Attributes
    ----------
    writes : Tensor ``[n_layers, n_heads, d_model]``, float64
        Each head's write into the residual stream averaged over the prompts,
        ``W_O^h mean_i(z_{h,i})`` (no bias: it belongs to no head).
    dictionary : Dictionary
        The atoms read.
    layers : list of int
        The model layer of each row of ``writes``.
    """

    writes: torch.Tensor
    dictionary: Dictionary
    layers: list[int]

    @property
    def heads(self) -> list[Head]:
        """Every head read, as ``(layer, head)`` pairs, layer-major."""
        return [(layer, head) for layer in self.layers for head in range(self.writes.shape[1])]

    @cached_property
    def logits(self) -> torch.Tensor:
        """Every head's mean logit for every atom, ``[n_layers, n_heads, v]``, float64."""
        return self.writes @ self.dictionary.atoms.double().T

    @cached_property
    def scores(self) -> torch.Tensor:
        """Each head's mean logit over all the atoms, ``[n_layers, n_heads]``, float64.

        The score of ``rank_heads(..., method="logit_lens")``; computed as the
        write's dot product with the mean atom, without the full ``logits``.
        """
        return self.writes @ self.dictionary.atoms.double().mean(0)

    def head_logits(self, layer: int, head: int) -> torch.Tensor:
        """One head's mean logit for every atom, ``[v]``, float64.

        Computed without the full ``logits``, so it equals their row up to rounding.
        """
        return self.writes[self._row(layer), self._column(head)] @ self.dictionary.atoms.double().T

    def top(self, layer: int, head: int, k: int) -> tuple[list[str], torch.Tensor]:
        """One head's ``k`` atoms with the largest mean logit, and those logits.

        Parameters
        ----------
        layer, head : int
            The head (a model layer index, and the head's index in it).
        k : int
            How many atoms; capped at the dictionary's size.

        Returns
        -------
        labels : list of str
            The atoms' labels, largest mean logit first.
        logits : Tensor ``[k]``, float64
            Their mean logits.

        Raises
        ------
        IndexError
            A head that was not read.
        """
        k = min(check_count(k, "k", minimum=0), len(self.dictionary))
        best = torch.topk(self.head_logits(layer, head), k)
        return [self.dictionary.labels[int(j)] for j in best.indices], best.values

    def top_atoms(self, k: int) -> dict[Head, list[str]]:
        """Every head's ``k`` atoms with the largest mean logit.

        Parameters
        ----------
        k : int
            How many atoms per head; capped at the dictionary's size (0 gives
            empty lists).

        Returns
        -------
        dict of (layer, head) to list of str
            The labels, largest mean logit first, for every head, layer-major.
        """
        k = min(check_count(k, "k", minimum=0), len(self.dictionary))
        n_layers, n_heads = self.writes.shape[:2]
        top = torch.topk(self.logits, k, dim=-1).indices if k else torch.empty(n_layers, n_heads, 0, dtype=torch.long)
        labels = self.dictionary.labels
        return {(layer, head): [labels[int(j)] for j in top[i, head]]
                for i, layer in enumerate(self.layers) for head in range(n_heads)}

    def _row(self, layer: int) -> int:
        if layer not in self.layers:
            raise IndexError(f"layer {layer} was not read; the lens has layers {self.layers}")
        return self.layers.index(layer)

    def _column(self, head: int) -> int:
        if not 0 <= head < self.writes.shape[1]:
            raise IndexError(f"head {head} is out of range: heads are 0..{self.writes.shape[1] - 1}")
        return head


def logit_lens(acts: HeadActivations, dictionary: Dictionary | torch.Tensor) -> LogitLens:
    """The logit lens of every recorded head: its mean logit for every atom of a dictionary.

    A head's logit for atom ``d_j`` on a prompt is ``d_j . x_h``, with ``x_h``
    its pooled contribution (uncentred); averaged over the prompts (the tokens,
    for a recording with ``pool=None``) it is ``d_j . W_O^h mean(z_h)``, so the
    per-prompt outputs are not needed: the moments of
    ``record_heads(..., store="moments")`` are enough.

    Parameters
    ----------
    acts : HeadActivations
        From :func:`hp_mini.record_heads`, with samples or moments, one prompt
        or more.
    dictionary : Dictionary or Tensor ``[v, d_model]``
        The atoms: a concept dictionary, the full unembedding
        (:func:`hp_mini.unembedding_dictionary`), or any matrix.

    Returns
    -------
    LogitLens
        ``logits`` ``[n_layers, n_heads, v]``, ``scores`` ``[n_layers, n_heads]``
        (the mean over atoms), ``top(layer, head, k)`` and ``top_atoms(k)``,
        in float64; rows in the order of ``acts.layers``.

    Raises
    ------
    TypeError
        ``acts`` is not :class:`~hp_mini.HeadActivations`.
    ValueError
        Activations that hold neither samples nor moments, or whose mean
        writes are NaN or infinite, or a dictionary that is empty, of another
        width, or holds NaN (see :func:`check_dictionary`).

    Examples
    --------
    >>> import hp_mini
    >>> from hp_mini.read.lens import logit_lens
    >>> model, tokenizer = hp_mini.load_model()                            # doctest: +SKIP
    >>> acts = hp_mini.record_heads(model, tokenizer, prompts)              # doctest: +SKIP
    >>> months = hp_mini.unembedding_dictionary(model, tokenizer, hp_mini.concept_words("months"))  # doctest: +SKIP
    >>> lens = logit_lens(acts, months)                                     # doctest: +SKIP
    >>> lens.top(12, 3, 5)                  # L12H3's five months, with their mean logits  # doctest: +SKIP
    """
    if not isinstance(acts, HeadActivations):
        raise TypeError(f"acts must be HeadActivations (from hp_mini.record_heads), got {type(acts).__name__}")
    dic = check_dictionary(dictionary, acts.d_model)
    if acts.z is not None:
        zbar = acts.z.double().mean(0)  # [L, H, dh]
    elif acts.moments is not None:
        zbar = acts.moments.sum.double() / acts.moments.count
    else:
        raise ValueError("acts holds neither samples nor moments; record with store='samples' or 'moments'")
    writes = torch.einsum("lhdk,lhk->lhd", acts.W_O.double(), zbar)
    lens = LogitLens(writes, dic, list(acts.layers))
    bad = [head_label(*h) for h, ok in zip(lens.heads, torch.isfinite(writes).all(-1).flatten().tolist()) if not ok]
    if bad:
        named = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        which = f"write of 1 head ({named}) is" if len(bad) == 1 else f"writes of {len(bad)} heads ({named}) are"
        raise ValueError(
            f"the mean {which} NaN or infinite; check the model's outputs (a half-precision overflow?) "
            "and record again"
        )
    return lens
