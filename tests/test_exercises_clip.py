"""The CLIP chapter's checkers accept correct answers and explain typical wrong ones."""

from __future__ import annotations

import pytest
import torch

from hp_mini.exercises import ExerciseError, check


def test_head_split_checker():
    def right(z, weight, n_heads):
        d_head = z.shape[-1] // n_heads
        w = weight.reshape(weight.shape[0], n_heads, d_head)
        return torch.einsum("nhk,dhk->nhd", z.reshape(z.shape[0], n_heads, d_head), w)

    def wrong_order(z, weight, n_heads):  # splits the weight's columns in the wrong order
        d_head = z.shape[-1] // n_heads
        w = weight.reshape(weight.shape[0], d_head, n_heads).transpose(1, 2)
        return torch.einsum("nhk,dhk->nhd", z.reshape(z.shape[0], n_heads, d_head), w)

    assert check("clip.head_split", right, quiet=True)
    with pytest.raises(ExerciseError, match="do not add up"):
        check("clip.head_split", wrong_order, quiet=True)
    with pytest.raises(ExerciseError, match="expected"):
        check("clip.head_split", lambda z, w, h: z.reshape(z.shape[0], h, -1), quiet=True)


def test_to_joint_checker():
    def right(x, g, proj, sigma):
        return ((x - x.mean(-1, keepdim=True)) * g / sigma[:, None]) @ proj

    assert check("clip.to_joint", right, quiet=True)
    with pytest.raises(ExerciseError, match="centring"):
        check("clip.to_joint", lambda x, g, p, s: (x * g / s[:, None]) @ p, quiet=True)
    with pytest.raises(ExerciseError, match="sigma"):
        check("clip.to_joint", lambda x, g, p, s: ((x - x.mean(-1, keepdim=True)) * g) @ p, quiet=True)


def test_zero_shot_checker():
    def right(images, text):
        return (torch.nn.functional.normalize(images, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T).argmax(-1)

    assert check("clip.zero_shot", right, quiet=True)
    with pytest.raises(ExerciseError, match="normalise"):
        check("clip.zero_shot", lambda i, t: (i @ t.T).argmax(-1), quiet=True)
    with pytest.raises(ExerciseError, match="stub"):
        check("clip.zero_shot", lambda i, t: (_ for _ in ()).throw(NotImplementedError()), quiet=True)
