"""Dictionaries of directions that decode to tokens, and the concept word lists.

The dictionary of Head Pursuit is the unembedding matrix: one row (atom) per
vocabulary token, the direction whose dot product with the residual stream is
that token's logit. :func:`unembedding_dictionary` builds it for the full
vocabulary or restricted to the tokens of a concept's words,
:func:`concept_words` returns the word lists shipped with hp_mini, and
:func:`concept_family` the wider family of words that count as the concept
when a head's description is read (country names *and* nationality
adjectives, month names *and* their abbreviations).

Example
-------
>>> import hp_mini
>>> hp_mini.concept_words("months")[:3]
['January', 'February', 'March']
>>> model, tokenizer = hp_mini.load_model()                                # doctest: +SKIP
>>> months = hp_mini.unembedding_dictionary(model, tokenizer, hp_mini.concept_words("months"))  # doctest: +SKIP
>>> months.atoms.shape, months.labels[:2]                                  # doctest: +SKIP
(torch.Size([24, 576]), [' January', 'January'])
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

import torch
from torch import nn

from hp_mini.model.architectures import model_parts

__all__ = [
    "ConceptFamily",
    "Dictionary",
    "as_dictionary",
    "concept_family",
    "concept_names",
    "concept_words",
    "random_atoms",
    "unembedding_dictionary",
]


@dataclass
class Dictionary:
    """Atoms (rows) with readable labels.

    Attributes
    ----------
    atoms : Tensor ``[v, d_model]``
        One atom per row.
    labels : list of str
        A readable label per atom (the decoded token, with its leading space).
    token_ids : LongTensor ``[v]`` or None
        The vocabulary id of each atom (None for a dictionary built from a
        plain matrix).
    words : list of str or None
        For a concept dictionary, the word each atom came from.
    missing : list of str
        Words that contributed no atom (every variant split into tokens that
        the multi-token policy dropped, or holds the tokenizer's unknown
        token, or the word was empty).
    multi_token : dict of str to list of str
        Each word variant that the tokenizer splits into several tokens,
        mapped to its pieces. Whether its first piece was kept follows the
        policy of :func:`unembedding_dictionary`; ``kept_first`` lists the
        variants whose first piece was kept.
    kept_first : list of str
        The multi-token variants represented by their first token.
    """

    atoms: torch.Tensor
    labels: list[str]
    token_ids: torch.Tensor | None = None
    words: list[str] | None = None
    missing: list[str] = field(default_factory=list)
    multi_token: dict[str, list[str]] = field(default_factory=dict)
    kept_first: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.atoms.ndim != 2:
            raise ValueError(f"atoms must be [v, d_model], got shape {tuple(self.atoms.shape)}")
        if len(self.labels) != self.atoms.shape[0]:
            raise ValueError(f"{len(self.labels)} labels for {self.atoms.shape[0]} atoms")

    def __len__(self) -> int:
        return self.atoms.shape[0]

    @property
    def d_model(self) -> int:
        return self.atoms.shape[1]

    def __repr__(self) -> str:
        shown = ", ".join(repr(s) for s in self.labels[:5]) + (", ..." if len(self) > 5 else "")
        return f"Dictionary({len(self)} atoms x {self.d_model}: [{shown}])"


def as_dictionary(dictionary: Dictionary | torch.Tensor) -> Dictionary:
    """A :class:`Dictionary` from a dictionary or a plain ``[v, d]`` matrix (labels ``"0"``, ``"1"``, ...)."""
    if isinstance(dictionary, Dictionary):
        return dictionary
    atoms = torch.as_tensor(dictionary)
    if atoms.ndim != 2:
        raise ValueError(f"a dictionary must be [v, d], got shape {tuple(atoms.shape)}")
    return Dictionary(atoms, [str(i) for i in range(atoms.shape[0])])


def random_atoms(
    dictionary: Dictionary,
    size: int,
    *,
    among: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> Dictionary:
    """A control dictionary: ``size`` atoms of ``dictionary`` drawn at random, without replacement.

    A concept's EVR means something only next to the EVR of a dictionary of
    the same size that holds no concept; this draws one.

    Parameters
    ----------
    dictionary : Dictionary
        The atoms to draw from, e.g. ``unembedding_dictionary(model, tokenizer)``.
    size : int
        How many atoms, at least 1.
    among : LongTensor, optional
        Draw only among these atom positions (e.g. the tokens that occur in
        the prompts). Default: all atoms.
    generator : torch.Generator, optional
        Draw from this generator (several draws in a row then differ); by
        default a new one seeded with ``seed``.
    seed : int
        The seed when no ``generator`` is given.

    Returns
    -------
    Dictionary
        The drawn atoms with their labels and token ids, in the order drawn.
    """
    dictionary = as_dictionary(dictionary)
    positions = torch.arange(len(dictionary)) if among is None else torch.as_tensor(among, dtype=torch.long).flatten()
    if len(positions) and (int(positions.min()) < 0 or int(positions.max()) >= len(dictionary)):
        raise ValueError(f"among= holds positions outside the dictionary's {len(dictionary)} atoms")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(positions):
        raise ValueError(f"size must be an integer from 1 to {len(positions)} (the atoms to draw from), got {size!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    picked = positions[torch.randperm(len(positions), generator=generator)[:size]]
    token_ids = None if dictionary.token_ids is None else dictionary.token_ids[picked]
    return Dictionary(dictionary.atoms[picked], [dictionary.labels[int(i)] for i in picked], token_ids)


# --------------------------------------------------------------------------- #
# Concept word lists
# --------------------------------------------------------------------------- #


def concept_names() -> list[str]:
    """The names of the word lists shipped with hp_mini (for :func:`concept_words`)."""
    folder = resources.files("hp_mini") / "data" / "concepts"
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


def concept_words(name: str) -> list[str]:
    """A concept's word list, shipped as ``hp_mini/data/concepts/{name}.txt``.

    Lines starting with ``#`` note the list's source and are skipped.

    Parameters
    ----------
    name : str
        One of :func:`concept_names`: ``"animals"``, ``"colours"``,
        ``"countries"``, ``"months"``, ``"nationalities"``, ``"numbers"``,
        ``"weekdays"``.

    Returns
    -------
    list of str

    Examples
    --------
    >>> import hp_mini
    >>> len(hp_mini.concept_words("weekdays"))
    7
    """
    names = concept_names()
    if name not in names:
        raise ValueError(f"no concept word list named {name!r}; available: {', '.join(names)}")
    text = (resources.files("hp_mini") / "data" / "concepts" / f"{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@dataclass(frozen=True)
class ConceptFamily:
    """The words that count as a concept when a description is read (see :func:`concept_family`).

    Attributes
    ----------
    name : str
        The concept.
    words : tuple of str
        Its words, in the order of the family's file, without repeats.
    """

    name: str
    words: tuple[str, ...]
    _folded: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_folded", frozenset(_fold(w) for w in self.words))

    def __contains__(self, token: object) -> bool:
        """Whether ``token``, without its surrounding spaces and case, is a word of the family."""
        return isinstance(token, str) and _fold(token) in self._folded

    def __len__(self) -> int:
        return len(self.words)

    def count(self, tokens) -> int:
        """How many of ``tokens`` (decoded token strings) are words of the family."""
        if isinstance(tokens, str):
            raise TypeError("give a list of tokens, not one string")
        return sum(token in self for token in tokens)


def _fold(token: str) -> str:
    return token.strip().casefold()


def concept_family(name: str) -> ConceptFamily:
    """The family of words that count as concept ``name`` when a head's top tokens are read.

    A concept's word list (:func:`concept_words`) holds one form of each member:
    country names, month names. A reader who sees ``' Japanese'`` or ``'Feb'``
    among a head's top tokens still reads the concept there, so the family adds the
    other common forms: nationality adjectives to the countries, the usual
    abbreviations to the months and weekdays, the other number words and the
    ordinals to the numbers, more colour names to the colours. Cities, capitals
    and other related words are not members. The families are shipped as
    ``hp_mini/data/concepts/families/{name}.txt`` (a line ``@list`` takes in a
    whole word list); a concept without a family file is its own word list.

    Parameters
    ----------
    name : str
        One of :func:`concept_names`.

    Returns
    -------
    ConceptFamily
        ``token in family`` compares the token without its surrounding spaces
        and case; ``family.count(tokens)`` counts the members among ``tokens``.
        A word of several tokens (``"South Korea"``) matches no single token.

    Examples
    --------
    >>> from hp_mini.read.dictionary import concept_family
    >>> concept_family("countries").count([" Japanese", " Albanian", " Amsterdam"])
    2
    >>> " Feb" in concept_family("months")
    True
    """
    names = concept_names()
    if name not in names:
        raise ValueError(f"no concept called {name!r}; available: {', '.join(names)}")
    path = resources.files("hp_mini") / "data" / "concepts" / "families" / f"{name}.txt"
    if not path.is_file():
        return ConceptFamily(name, tuple(dict.fromkeys(concept_words(name))))
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            try:
                words.extend(concept_words(line[1:].strip()))
            except ValueError as err:
                raise ValueError(f"the family file of {name!r} takes in an unknown word list: {err}") from None
        else:
            words.append(line)
    return ConceptFamily(name, tuple(dict.fromkeys(words)))


# --------------------------------------------------------------------------- #
# The unembedding dictionary
# --------------------------------------------------------------------------- #


def _is_whole(piece: str, word: str) -> bool:
    """Whether a first piece is specific to the word: at least 3 characters and half the word."""
    core = piece.strip()
    return len(core) >= 3 and len(core) * 2 >= len(word.strip())


def unembedding_dictionary(
    model: nn.Module,
    tokenizer,
    words: list[str] | None = None,
    *,
    normalize: bool = True,
    final_norm: bool = False,
    multi_token: Literal["first", "drop"] = "first",
) -> Dictionary:
    """The unembedding matrix as a dictionary, optionally restricted to a concept.

    Parameters
    ----------
    model : nn.Module
        A causal language model (its ``get_output_embeddings()`` is used).
    tokenizer : tokenizer
        Its tokenizer.
    words : list of str, optional
        Restrict the dictionary to these words' tokens (see
        :func:`concept_words`). By default every vocabulary token is an atom,
        atom ``i`` being token ``i``.
    normalize : bool, default True
        Scale every atom to unit L2 norm, so that pursuit compares directions.
    final_norm : bool, default False
        Fold the gain ``gamma`` of the model's final norm into the atoms
        (``D diag(gamma)``; ``gamma`` is ``w`` or ``1 + w`` as the norm itself
        computes, see :attr:`hp_mini.ModelParts.final_norm`): then ``atoms @ x``
        is the logit of the *normalised* residual up to the per-sample factor
        ``1 / rms(x)`` (and before any logit scaling or soft cap). That factor
        depends on the whole residual stream, is not linear, and is left out.
        For a LayerNorm (GPT-2) its centring and bias are left out too.
    multi_token : {"first", "drop"}, default "first"
        What to do with a word variant that splits into several tokens.
        ``"first"`` keeps its first token when that token is specific to the
        word: at least 3 characters and at least half of the word (so
        ``" Nether"`` stands for ``" Netherlands"`` but ``" New"`` does not stand
        for ``" New Zealand"``). ``"drop"`` drops every such variant.

    Returns
    -------
    Dictionary
        ``atoms`` ``[v, d_model]`` (float32), ``labels``, ``token_ids``; for a
        concept also ``words``, ``missing`` and ``multi_token``.

    Notes
    -----
    Each word contributes two variants, ``" word"`` (with a leading space, as
    in running text) and ``"word"``. Tokens are deduplicated, keeping the
    first word that produced them; the order follows ``words``. A variant
    that the tokenizer encodes with its unknown token (``unk_token_id``) gives
    no atom: the words left with none are listed in ``missing``, and named in
    a ``RuntimeWarning``.

    Examples
    --------
    >>> import hp_mini
    >>> model, tokenizer = hp_mini.load_model()                            # doctest: +SKIP
    >>> full = hp_mini.unembedding_dictionary(model, tokenizer)             # doctest: +SKIP
    >>> full.atoms.shape                                                    # doctest: +SKIP
    torch.Size([49152, 576])
    """
    if multi_token not in ("first", "drop"):
        raise ValueError(f"multi_token must be 'first' or 'drop', got {multi_token!r}")
    U = _unembedding(model, final_norm)
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    if words is None:
        ids, found, source = torch.arange(U.shape[0]), _WordTokens(), None
    else:
        found = _word_tokens(tok, words, multi_token)
        ids, source = torch.tensor(list(found.seen), dtype=torch.long), list(found.seen.values())
    if int(ids.max()) >= U.shape[0]:
        raise ValueError(f"token id {int(ids.max())} is outside the {U.shape[0]}-row unembedding")
    atoms = _unit_rows(U[ids]) if normalize else U[ids]
    labels = [tok.decode([int(i)]) for i in ids] if words is not None else tok.batch_decode(ids[:, None].tolist())
    return Dictionary(atoms, labels, ids, source, found.missing, found.multi, found.kept_first)


def _unembedding(model: nn.Module, final_norm: bool) -> torch.Tensor:
    """The unembedding matrix, float32 on the CPU, with the final norm's gain folded in when asked."""
    parts = model_parts(model)
    with torch.no_grad():
        U = parts.unembedding.weight.float().cpu()
        if final_norm:
            U = U * parts.final_norm.gain.cpu()  # w or 1 + w, as the norm itself computes
    return U


@dataclass
class _WordTokens:
    """The tokens that words gave (token -> the first word that gave it), and what the words did not give."""

    seen: dict[int, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    multi: dict[str, list[str]] = field(default_factory=dict)
    kept_first: list[str] = field(default_factory=list)


def _word_tokens(tok, words: list[str], multi_token: str) -> _WordTokens:
    """Each word's tokens (``" word"``, then ``"word"``) under the multi-token policy; ``unk`` losses warned of."""
    if isinstance(words, str):
        raise TypeError("words must be a list of words, not one string; see hp_mini.concept_words")
    unk = getattr(tok, "unk_token_id", None)
    unknown: list[str] = []
    out = _WordTokens()
    for word in words:
        word = word.strip()
        found = unknown_piece = False
        for variant in (" " + word, word):
            if not word:
                break
            pieces = tok.encode(variant, add_special_tokens=False)
            if unk is not None and unk in pieces:
                unknown_piece = True
                continue
            if len(pieces) == 1:
                token = pieces[0]
            elif len(pieces) > 1:
                out.multi[variant] = [tok.decode([p]) for p in pieces]
                first = tok.decode([pieces[0]])
                if multi_token == "drop" or not _is_whole(first, word):
                    continue
                token = pieces[0]
                out.kept_first.append(variant)
            else:
                continue
            found = True
            out.seen.setdefault(token, word)
        if not found:
            out.missing.append(word)
            if unknown_piece:
                unknown.append(word)
    if unknown:
        warnings.warn(
            f"unembedding_dictionary: the tokenizer encodes {len(unknown)} of the words with its unknown "
            f"token {tok.decode([unk])!r}, so they give no atom and are left out (see dictionary.missing): "
            f"{unknown[:20]}{' ...' if len(unknown) > 20 else ''}",
            RuntimeWarning,
            stacklevel=3,  # the caller of unembedding_dictionary
        )
    if not out.seen:
        raise ValueError("none of the words gave a token; check the word list and the tokenizer")
    return out


def _unit_rows(atoms: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit norm; zero rows stay zero, with a warning."""
    norms = atoms.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        warnings.warn(f"{int((norms == 0).sum())} atoms are zero and stay zero", RuntimeWarning, stacklevel=3)
    return atoms / norms.clamp_min(torch.finfo(atoms.dtype).tiny)
