"""The vision experiments' dictionaries, and where a LLaVA's heads read the image.

Head Pursuit ranks a vision-language model's heads on their writes pooled over
the image tokens, with a dictionary of class-name unembeddings. This module
holds what the book's LLaVA experiments (``benchmarks/vision_edits.py``,
chapter "Heads in a vision-language model") need beside the library's
recording, ranking and editing calls:

- :data:`DIGIT_WORDS_AND_NUMERALS` and :data:`CAPTION_CONCEPTS`: the words of
  the dictionaries (digits; colours, quantities and sizes of scenes);
- :func:`concept_dictionary`: their unembedding dictionary (first-piece rule
  of :func:`hp_mini.unembedding_dictionary`);
- :func:`ranking_and_scoring_digits`: held-out MNIST digits split into a
  set to rank heads on and a disjoint set to score edits on;
- :func:`somp_and_lens_rankings`: the two rankings the experiments compare,
  the first layers left out;
- :func:`image_attention`: how much each head's attention, at one position,
  falls on the image tokens: which heads *read* the image where the answer is
  written.

Example
-------
>>> import hp_mini
>>> from hp_mini.experiments import vision
>>> model, processor = hp_mini.load_model("smollm2-llava")                  # doctest: +SKIP
>>> d = vision.concept_dictionary(model, processor, "digits")                # doctest: +SKIP
>>> reads = vision.image_attention(model, processor, images, prompt)         # doctest: +SKIP
>>> reads.shape                                                              # doctest: +SKIP
torch.Size([30, 9])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hp_mini.model.sites import Head
from hp_mini.rank.ranking import HeadRanking, rank_heads
from hp_mini.vision.digits import DIGIT_WORDS, NUMERALS
from hp_mini.vision.shapes import COLOURS, COUNT_WORDS, SIZES

__all__ = [
    "CAPTION_CONCEPTS",
    "DIGIT_WORDS_AND_NUMERALS",
    "concept_dictionary",
    "image_attention",
    "ranking_and_scoring_digits",
    "somp_and_lens_rankings",
    "top_heads",
]

DIGIT_WORDS_AND_NUMERALS: tuple[str, ...] = tuple(DIGIT_WORDS) + tuple(NUMERALS)
"""The ten digit names and the ten numerals: the MNIST dictionary's words."""

CAPTION_CONCEPTS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "count": tuple(COUNT_WORDS.values()),
    "size": tuple(SIZES),
}
"""The words of each caption concept: the scenes' colours, number words and sizes."""


def somp_and_lens_rankings(acts, dictionary, *, skip_layers: int = 1) -> dict[str, HeadRanking]:
    """The SOMP and logit-lens rankings of recorded heads, without the first ``skip_layers`` layers.

    SOMP scores each head by its EVR after as many steps as the dictionary has
    atoms (every class name can be picked); the logit lens by the mean logit its
    pooled write gives the class names.

    Parameters
    ----------
    acts : HeadActivations
        The recorded heads (pooled over the image tokens, or at one position).
    dictionary : Dictionary
        The class names' unembeddings (:func:`concept_dictionary`).
    skip_layers : int, default 1
        How many first layers to leave out (layer 0's heads reach a high EVR
        with any dictionary).

    Returns
    -------
    dict
        ``{"SOMP": HeadRanking, "logit lens": HeadRanking}``, best first.
    """
    somp = rank_heads(acts, dictionary, method="somp", n_atoms=len(dictionary), progress=False)
    lens = rank_heads(acts, dictionary, method="logit_lens", progress=False)
    return {"SOMP": somp.skip_layers(skip_layers), "logit lens": lens.skip_layers(skip_layers)}


def concept_dictionary(model, tokenizer, concept: str):
    """The unembedding dictionary of ``"digits"`` or of a caption concept (:data:`CAPTION_CONCEPTS`).

    Each word is taken with and without a leading space; a form the tokenizer
    splits is kept by its first piece when that piece stands for the word
    (:func:`hp_mini.unembedding_dictionary`, ``multi_token="first"``).

    Raises
    ------
    ValueError
        For an unknown concept, naming the known ones.
    """
    from hp_mini.read.dictionary import unembedding_dictionary

    if concept == "digits":
        words = list(DIGIT_WORDS_AND_NUMERALS)
    elif concept in CAPTION_CONCEPTS:
        words = list(CAPTION_CONCEPTS[concept])
    else:
        raise ValueError(f"concept must be 'digits' or one of {sorted(CAPTION_CONCEPTS)}, got {concept!r}")
    return unembedding_dictionary(model, getattr(tokenizer, "tokenizer", tokenizer), words, multi_token="first")


def ranking_and_scoring_digits(rank_per_class: int, per_class: int) -> tuple[dict, dict]:
    """Held-out MNIST digits: the first ``rank_per_class`` of each class, and the next ``per_class``.

    Both come from :func:`hp_mini.vision.digits.digits_dataset` ``("test")``, in
    file order, so the two sets are disjoint and every digit is equally represented.

    Returns
    -------
    ranking, scoring : dict
        Dicts of equal-length lists, with the keys of ``digits_dataset``
        (``"image"``, ``"label"``, ``"index"``, ...).
    """
    from hp_mini.vision.digits import digits_dataset

    for name, n in (("rank_per_class", rank_per_class), ("per_class", per_class)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    test = digits_dataset("test", per_class=rank_per_class + per_class)
    seen: dict[int, int] = {}
    parts: tuple[dict, dict] = ({k: [] for k in test}, {k: [] for k in test})
    for i, y in enumerate(test["label"]):
        part = parts[0] if seen.get(y, 0) < rank_per_class else parts[1]
        seen[y] = seen.get(y, 0) + 1
        for key in test:
            part[key].append(test[key][i])
    return parts


def image_attention(model, processor, images: Sequence, prompt: str, *, position: int | Sequence[int] = -1,
                    batch_size: int = 25) -> torch.Tensor:
    """The share of each head's attention, at a position, that falls on the image tokens.

    Parameters
    ----------
    model, processor
        A LLaVA-style model whose config has ``image_token_id``, and its processor.
    images : list of images
    prompt : str
        The prompt, with its image placeholder, asked about every image.
    position : int or list of int, default -1
        The query position(s), counted in the prompt as Python indexes
        (``-1``: the last position, whose next token is the answer).
    batch_size : int, default 25

    Returns
    -------
    Tensor ``[n_layers, n_heads]``, or ``[n_positions, n_layers, n_heads]`` for a list of positions
        The attention weight summed over the image positions, averaged over
        images (float64; 0: the head ignores the image, 1: it reads only the image).

    Raises
    ------
    ValueError
        When there are no images, the model has no image token, or a position
        is outside the prompt.
    """
    from hp_mini.model.inputs import encode

    images = list(images)
    image_token = getattr(getattr(model, "config", None), "image_token_id", None)
    if not images:
        raise ValueError("give at least one image")
    if image_token is None:
        raise ValueError(f"{type(model).__name__} has no config.image_token_id: not a LLaVA-style model")
    positions = [position] if isinstance(position, int) else [int(p) for p in position]
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the only kernel that returns its weights
    total = torch.zeros(())
    try:
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            batch = encode(model, processor, [prompt] * len(chunk), images=chunk)
            length = batch["input_ids"].shape[1]
            outside = [p for p in positions if not -length <= p < length]
            if outside:
                raise ValueError(f"position {outside[0]} is outside the prompt ({length} tokens)")
            is_image = (batch["input_ids"] == image_token).double()  # [B, T]; one prompt: no padding
            with torch.no_grad():
                out = model(**batch, output_attentions=True, use_cache=False)
            # [B, P, L, H]: each layer's attention [B, H, T, T] at the query positions, summed over image keys
            share = torch.stack([torch.einsum("bhpt,bt->bph", a[:, :, positions, :].double(), is_image)
                                 for a in out.attentions], 2)
            total = total + share.sum(0)
    finally:
        model.set_attn_implementation(before)
    total = total / len(images)
    return total[0] if isinstance(position, int) else total


def top_heads(scores: torch.Tensor, k: int | None = None) -> list[Head]:
    """The heads of a ``[n_layers, n_heads]`` score grid, highest first (all of them by default)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be a [n_layers, n_heads] grid, got shape {tuple(scores.shape)}")
    n_layers, n_heads = scores.shape
    k = n_layers * n_heads if k is None else k
    if not 0 <= k <= n_layers * n_heads:
        raise ValueError(f"k must be between 0 and {n_layers * n_heads}, got {k}")
    order = scores.flatten().argsort(descending=True, stable=True)[:k]
    return [divmod(int(i), n_heads) for i in order]
