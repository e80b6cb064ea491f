"""Partial descriptions of the shapes scenes, in their caption language.

A caption names every attribute of a scene ("three small red circles on the
left"); a partial description names only some ("red shapes", "circles"). They
are the prompts of CLIP's text tower: ``shapes-clip`` is trained on them
(:mod:`hp_mini.vision.shapes_clip`), zero-shot classification compares images
with one of them per value of an attribute (:mod:`hp_mini.vision.zero_shot`).

Example
-------
>>> from hp_mini.vision.scene_prompts import concept_prompts, describe
>>> describe(count=3, colour="red", shape="circle")
'three red circles'
>>> concept_prompts("shape")
(['circle', 'square', 'triangle', 'diamond'], ['circles', 'squares', 'triangles', 'diamonds'])
"""

from __future__ import annotations

from hp_mini.vision.shapes import ATTRIBUTE_VALUES, COUNT_WORDS

__all__ = ["concept_prompts", "describe"]


def describe(*, colour=None, shape=None, count=None, size=None, position=None) -> str:
    """A description in the scenes' caption language that mentions only the given attributes.

    Parameters
    ----------
    colour, shape, count, size, position : optional
        The attribute values to mention (as in
        :data:`hp_mini.vision.shapes.ATTRIBUTE_VALUES`); ``None`` leaves one out.

    Returns
    -------
    str
        ``describe(colour="red")`` -> ``"red shapes"``; ``describe(shape="circle")``
        -> ``"circles"``; with every attribute it is the scene's caption.
    """
    words = []
    if count is not None:
        words.append(COUNT_WORDS[int(count)])
    if size is not None:
        words.append(size)
    if colour is not None:
        words.append(colour)
    noun = shape if shape is not None else "shape"
    words.append(noun if count is not None and int(count) == 1 else noun + "s")
    if position is not None:
        words += ["on", "the", position]
    return " ".join(words)


def concept_prompts(attribute: str) -> tuple[list[str], list[str]]:
    """One prompt per value of an attribute, e.g. ``"red shapes"``.

    Parameters
    ----------
    attribute : str
        A key of :data:`hp_mini.vision.shapes.ATTRIBUTE_VALUES` (``"colour"``,
        ``"shape"``, ``"count"``, ``"size"`` or ``"position"``).

    Returns
    -------
    values : list of str
        The attribute's values, in class-index order.
    prompts : list of str
        ``describe(**{attribute: value})`` for each value.

    Raises
    ------
    ValueError
        For an unknown attribute.
    """
    if attribute not in ATTRIBUTE_VALUES:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {sorted(ATTRIBUTE_VALUES)}")
    vals = ATTRIBUTE_VALUES[attribute]
    return [str(v) for v in vals], [describe(**{attribute: v}) for v in vals]
