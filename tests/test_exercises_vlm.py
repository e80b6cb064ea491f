"""The checkers of the VLM chapter accept right answers and explain wrong ones."""

from __future__ import annotations

import pytest
import torch

from hp_mini.exercises import check


def test_image_weights():
    def right(ids, mask, image_id):
        sel = ((ids == image_id) & mask.bool()).float()
        return sel / sel.sum(1, keepdim=True)

    def unnormalised(ids, mask, image_id):
        return (ids == image_id).float()

    def ignores_mask(ids, mask, image_id):
        sel = (ids == image_id).float()
        return sel / sel.sum(1, keepdim=True)

    check("vlm.image_weights", right)
    with pytest.raises(AssertionError, match="are 0/1"):
        check("vlm.image_weights", unnormalised)
    with pytest.raises(AssertionError, match="AND whose attention mask is 1"):
        check("vlm.image_weights", ignores_mask)


def test_jaccard():
    check("vlm.jaccard", lambda a, b: len(set(a) & set(b)) / len(set(a) | set(b)))
    with pytest.raises(AssertionError, match="not of the smaller set"):
        check("vlm.jaccard", lambda a, b: len(set(a) & set(b)) / min(len(set(a)), len(set(b))))


def test_keyword_ratio():
    def right(edited, unedited, keywords):
        count = lambda c: sum(w.strip(".") in keywords for w in c.lower().split())  # noqa: E731
        return sum(map(count, edited)) / sum(map(count, unedited))

    def presence(edited, unedited, keywords):
        has = lambda c: any(w in keywords for w in c.lower().split())  # noqa: E731
        return sum(map(has, edited)) / sum(map(has, unedited))

    check("vlm.keyword_ratio", right)
    with pytest.raises(AssertionError, match="every keyword occurrence"):
        check("vlm.keyword_ratio", presence)
    with pytest.raises(AssertionError):
        check("vlm.keyword_ratio", lambda e, u, k: torch.tensor(1.0))
