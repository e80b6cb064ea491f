"""Checkers for the exercises of the chapter on heads in a vision-language model (``book/06_vlm_heads.md``)."""

from __future__ import annotations

import torch

from . import checker


@checker("vlm.image_weights")
def _check_image_weights(image_weights) -> None:
    """``image_weights(input_ids [B, T], attention_mask [B, T], image_token_id) -> [B, T]`` averaging weights."""
    image_id = 7
    ids = torch.tensor(
        [
            [0, 0, 7, 7, 7, 3, 4],  # left padding (pad id 0)
            [7, 7, 5, 6, 2, 9, 1],
            [7, 7, 7, 7, 5, 7, 7],  # an image token id after the text; the padded position may hold any id
        ]
    )
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7, [1, 1, 1, 1, 1, 1, 0]])
    got = image_weights(ids, mask, image_id)
    assert isinstance(got, torch.Tensor), f"returned {type(got).__name__}; expected a tensor"
    assert tuple(got.shape) == tuple(ids.shape), f"returned shape {tuple(got.shape)}, expected {tuple(ids.shape)}"
    expected = torch.zeros(ids.shape)
    for b in range(ids.shape[0]):
        sel = [t for t in range(ids.shape[1]) if ids[b, t] == image_id and mask[b, t] == 1]
        for t in sel:
            expected[b, t] = 1 / len(sel)
    got = got.float()
    if torch.allclose(got, expected, atol=1e-6):
        return
    if torch.allclose(got, (ids == image_id).float(), atol=1e-6):
        raise AssertionError("the weights are 0/1: divide each row by its number of image tokens, so they average")
    if not torch.allclose(got.sum(1), torch.ones(ids.shape[0]), atol=1e-5):
        raise AssertionError(f"each row must sum to 1 (an average); your rows sum to {got.sum(1).tolist()}")
    raise AssertionError(
        "the weights average over the wrong positions: keep positions whose id is the image token id "
        "AND whose attention mask is 1, and nothing else"
    )


@checker("vlm.jaccard")
def _check_jaccard(jaccard) -> None:
    """``jaccard(a, b) -> float`` for two collections of ``(layer, head)`` pairs."""
    cases = [
        ([(0, 1), (2, 3)], [(2, 3), (1, 1)], 1 / 3),
        ([(0, 1), (2, 3)], [(0, 1), (2, 3)], 1.0),
        ([(0, 1)], [(1, 0)], 0.0),
        ([(0, 1), (0, 1), (3, 3)], [(0, 1)], 0.5),  # a head listed twice is still one head
        ([(1, 2), (3, 4), (5, 6), (7, 0)], [(1, 2)], 0.25),
    ]
    for a, b, want in cases:
        got = jaccard(a, b)
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise AssertionError(f"jaccard({a}, {b}) returned {got!r}; expected a number") from None
        if abs(got - want) < 1e-9:
            continue
        inter = len(set(a) & set(b))
        if abs(got - inter / min(len(set(a)), len(set(b)))) < 1e-9 and want != got:
            raise AssertionError(
                f"jaccard({a}, {b}) = {got}, expected {want}: divide the intersection by the size of the "
                "union, not of the smaller set"
            )
        raise AssertionError(
            f"jaccard({a}, {b}) = {got}, expected {want} (|A ∩ B| / |A ∪ B|, with A and B as sets of heads)"
        )


@checker("vlm.keyword_ratio")
def _check_keyword_ratio(keyword_ratio) -> None:
    """``keyword_ratio(edited, unedited, keywords) -> float``: mean keywords per edited caption / unedited."""
    keywords = ["red", "blue", "green"]
    unedited = ["a red square", "two blue circles", "one green and red triangle", "four squares"]
    edited = ["a square", "two blue blue circles", "one triangle", "four red squares"]
    got = keyword_ratio(edited, unedited, keywords)
    try:
        got = float(got)
    except (TypeError, ValueError):
        raise AssertionError(f"returned {got!r}; expected a number") from None
    want = (0 + 2 + 0 + 1) / (1 + 1 + 2 + 0)  # mean count ratio; the means' 1/n cancels
    if abs(got - want) < 1e-9:
        if abs(float(keyword_ratio(["Red square."], ["a red square"], keywords)) - 1.0) > 1e-9:
            raise AssertionError("'Red square.' has one colour word: lower-case the captions and strip the full stop")
        return
    if abs(got - 2 / 3) < 1e-9:
        raise AssertionError(
            f"returned {got}: you counted captions that contain a keyword; count every keyword occurrence "
            "(\"blue blue\" is two)"
        )
    raise AssertionError(
        f"returned {got}, expected {want:.4f}: count the keywords of every caption (split on whitespace), "
        "average over the edited captions and divide by the same average over the unedited ones"
    )
