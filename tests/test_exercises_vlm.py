"""The checkers of the VLM chapter accept right answers and explain wrong ones."""

from __future__ import annotations

import functools

import pytest

import hp_mini
from hp_mini.exercises import ExerciseError, check


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


@functools.lru_cache(maxsize=1)
def _small_digits_vlm():
    """A digits-vlm small enough to train in seconds, on scikit-learn's digits, and two test sets."""
    from hp_mini.vision import digits, digits_vlm

    settings = {
        **digits_vlm.TRAINING,
        "source": "sklearn",
        "probe_steps": 60,
        "steps": 120,
        "probe_batch_size": 8,
        "batch_size": 4,
        "warmup": 1,
        "lr": 5e-3,
        "vision": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        "text": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
    }
    model, processor, _ = digits_vlm.train_digits_vlm(progress=False, settings=settings, n_train=400)
    test = digits.digits_dataset("test", source="sklearn", per_class=6)
    small = digits.digits_dataset("test", source="sklearn", per_class=3)
    return model, processor, test, small


def test_form_head_is_checked_against_the_model(monkeypatch):
    import hp_mini.exercises.vlm as ex
    from hp_mini.vision import digits, digits_vlm

    model, processor, test, small = _small_digits_vlm()
    monkeypatch.setattr(ex, "_digits_vlm", lambda: (model, processor, test, small))
    heads = [(layer, h) for layer in range(2) for h in range(2)]

    def answers(images, edit):
        with hp_mini.scale_heads(model, edit):
            return [a.strip() for a in digits_vlm.ask(model, processor, images, "word")]

    # the oracle: exact-match accuracy with each head inverted, from ask() and the labels
    def acc(head):
        got = answers(small["image"], {head: -1.0})
        return sum(a == digits.DIGIT_WORDS[y] for a, y in zip(got, small["label"]))

    scores = [acc(h) for h in heads]
    worst = heads[scores.index(min(scores))]
    got = answers(test["image"], {worst: -1.0})
    n_word = sum(a in digits.DIGIT_WORDS for a in got)
    n_num = sum(a in digits.NUMERALS for a in got)
    form = max([("word", n_word), ("numeral", n_num), ("other", len(got) - n_word - n_num)], key=lambda t: t[1])[0]
    either = sum(a in (digits.DIGIT_WORDS[y], str(y)) for a, y in zip(got, test["label"])) / len(got)
    right = {"head": worst, "answers_in": form, "either_form": either}

    assert check("vlm.form_head", right, quiet=True)
    better = [h for h, s in zip(heads, scores) if s > min(scores)]
    assert better, "the small model should have heads that matter more than others"
    with pytest.raises(ExerciseError, match="another head leaves"):
        check("vlm.form_head", {**right, "head": better[0]}, quiet=True)
    other_form = "numeral" if form != "numeral" else "word"
    with pytest.raises(ExerciseError, match="look at the answers"):
        check("vlm.form_head", {**right, "answers_in": other_form}, quiet=True)
    with pytest.raises(ExerciseError, match="name the right digit"):
        check("vlm.form_head", {**right, "either_form": either + 0.2}, quiet=True)
    with pytest.raises(ExerciseError, match="keys"):
        check("vlm.form_head", (worst, form), quiet=True)
    with pytest.raises(ExerciseError, match="is not one of them"):
        check("vlm.form_head", {**right, "head": (9, 0)}, quiet=True)


def test_half_k_needs_the_smallest_k_below_half(monkeypatch):
    import contextlib

    import hp_mini.edit.scaling
    import hp_mini.exercises.vlm as ex
    from hp_mini.vision import digits_vlm

    # A stand-in model whose accuracy is a known function of the edited heads: the checker's
    # own logic (which heads, which k, which comparisons) is what is tested here.
    ranking = type("Ranking", (), {"heads": [(2, 0), (0, 1), (1, 3), (3, 2), (0, 0), (1, 1), (2, 2)]})()
    edited: list = []
    accuracy = {0: 0.8, 1: 0.8, 2: 0.6, 3: 0.56, 4: 0.2, 5: 0.1}  # k heads outside layer 0 -> accuracy

    @contextlib.contextmanager
    def fake_scale_heads(model, scales, **_):
        edited.append(dict(scales))
        yield
        edited.pop()

    def fake_evaluator(model, processor, images, labels, form="word", **_):
        def evaluate():
            scales = edited[-1] if edited else {}
            assert all(layer != 0 and a == -1.0 for (layer, _), a in scales.items()), "layer 0 was edited"
            return {"accuracy": accuracy[len(scales)]}

        return evaluate

    test = {"image": [None] * 4, "label": [0, 1, 2, 3]}
    monkeypatch.setattr(ex, "_digits_vlm", lambda: (None, None, None, test))
    monkeypatch.setattr(ex, "_digits_vlm_somp", lambda: ranking)
    monkeypatch.setattr(hp_mini.edit.scaling, "scale_heads", fake_scale_heads)
    monkeypatch.setattr(digits_vlm, "evaluator", fake_evaluator)

    assert check("vlm.half_k", 4, quiet=True)  # 0.2 / 0.8 < 0.5; k = 3 leaves 0.7
    with pytest.raises(ExerciseError, match="not less than half"):
        check("vlm.half_k", 3, quiet=True)
    with pytest.raises(ExerciseError, match="k = 4 already leaves 0.25"):
        check("vlm.half_k", 5, quiet=True)
    with pytest.raises(ExerciseError, match="between 1 and 5"):
        check("vlm.half_k", 6, quiet=True)
    with pytest.raises(ExerciseError, match="an int"):
        check("vlm.half_k", None, quiet=True)
