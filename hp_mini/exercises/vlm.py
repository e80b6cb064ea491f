"""Checkers for the exercises of the chapter on heads in a vision-language model (``book/06_vlm_heads.md``)."""

from __future__ import annotations

import functools

import torch

from hp_mini.exercises import checker


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


@functools.lru_cache(maxsize=1)
def _digits_vlm():
    """``digits-vlm`` and its held-out digits, loaded once per process for the checks."""
    from hp_mini.model.loading import load_model
    from hp_mini.vision import digits

    model, processor = load_model("digits-vlm")
    return model, processor, digits.digits_dataset("test"), digits.digits_dataset("test", per_class=10)


@checker("vlm.form_head")
def _check_form_head(answer) -> None:
    """``{"head": (layer, head), "answers_in": "word" | "numeral" | "other", "either_form": float}``."""
    from hp_mini.edit.scaling import scale_heads
    from hp_mini.model.sites import head_label
    from hp_mini.vision import digits, digits_vlm
    from hp_mini.experiments.classification import one_head_at_a_time

    keys = {"head", "answers_in", "either_form"}
    assert isinstance(answer, dict) and keys <= set(answer), (
        f"pass a dict with the keys {sorted(keys)}; got {answer!r:.80}"
    )
    try:
        head = tuple(int(v) for v in answer["head"])
    except (TypeError, ValueError):
        raise AssertionError(f"answer['head'] must be a (layer, head) pair of ints, got {answer['head']!r}") from None
    assert len(head) == 2, f"answer['head'] must be a (layer, head) pair, got {answer['head']!r}"
    assert answer["answers_in"] in ("word", "numeral", "other"), (
        f"answer['answers_in'] must be 'word', 'numeral' or 'other', got {answer['answers_in']!r}"
    )
    model, processor, test, small = _digits_vlm()
    n_layers, n_heads = model.config.text_config.num_hidden_layers, model.config.text_config.num_attention_heads
    assert 0 <= head[0] < n_layers and 0 <= head[1] < n_heads, (
        f"digits-vlm has {n_layers} layers of {n_heads} heads; {head} is not one of them"
    )
    # Which head: every head, one at a time, on a few held-out digits of every class.
    scan = one_head_at_a_time(
        model,
        digits_vlm.evaluator(model, processor, small["image"], small["label"]),
        [(layer, h) for layer in range(n_layers) for h in range(n_heads)],
    )
    worst = set(scan.index[scan["accuracy"] == scan["accuracy"].min()])  # ties: any of them
    assert head_label(*head) in worst, (
        f"inverting {head_label(*head)} alone leaves {scan.loc[head_label(*head), 'accuracy']:.2f} of the "
        f"accuracy on {len(small['label'])} held-out digits, but another head leaves {scan['accuracy'].min():.2f}: invert every "
        "head in turn (classification_edits.one_head_at_a_time) and take the one that leaves least"
    )
    # What the model answers then: on all held-out digits.
    evaluate = digits_vlm.evaluator(model, processor, test["image"], test["label"], "word")
    with scale_heads(model, {head: -1.0}):
        scores = evaluate()
    answers = evaluate.answers
    shares = {
        "word": sum(a in digits.DIGIT_WORDS for a in answers) / len(answers),
        "numeral": sum(a in digits.NUMERALS for a in answers) / len(answers),
    }
    shares["other"] = 1 - shares["word"] - shares["numeral"]
    form = max(shares, key=shares.get)
    assert answer["answers_in"] == form, (
        f"with {head_label(*head)} inverted, {shares[form]:.0%} of the answers are of the form {form!r}, "
        f"not {answer['answers_in']!r}: look at the answers themselves (evaluate.answers), not only at the accuracy"
    )
    try:
        either = float(answer["either_form"])
    except (TypeError, ValueError):
        raise AssertionError(f"answer['either_form'] must be a number, got {answer['either_form']!r}") from None
    if abs(either - scores["accuracy"]) < 1e-9 and abs(either - scores["either_form"]) > 0.01:
        raise AssertionError(
            "that is the exact-match accuracy; count an answer as right when it names the right digit "
            "as a word OR as a numeral ('7' and 'seven' for a 7)"
        )
    assert abs(either - scores["either_form"]) <= 0.01, (
        f"answer['either_form'] = {either:.3f}, but {scores['either_form']:.3f} of the answers on the {len(test['label'])} "
        "held-out digits name the right digit in one form or the other"
    )


@functools.lru_cache(maxsize=1)
def _digits_vlm_somp():
    """The chapter's SOMP ranking of digits-vlm's heads for the digit names and numerals."""
    from hp_mini.record.activations import record_heads
    from hp_mini.read.dictionary import unembedding_dictionary
    from hp_mini.rank.ranking import rank_heads
    from hp_mini.vision import digits, digits_vlm

    model, processor, test, _ = _digits_vlm()
    acts = record_heads(model, processor, [digits_vlm.question_prompt("word")] * len(test["image"]),
                        images=test["image"], pool="image", progress=False)
    dictionary = unembedding_dictionary(model, processor.tokenizer, list(digits.DIGIT_WORDS) + list(digits.NUMERALS))
    return rank_heads(acts, dictionary, method="somp", n_atoms=len(dictionary), progress=False)


@checker("vlm.half_k")
def _check_half_k(k_half) -> None:
    """The smallest ``k`` whose top-``k`` SOMP heads outside layer 0 leave less than half the accuracy.

    Measured on the 100 digits of ``digits_dataset("test", per_class=10)``; the
    ranking is the chapter's, on all held-out digits.
    """
    from hp_mini.edit.scaling import scale_heads
    from hp_mini.vision import digits_vlm

    assert k_half is not None and not isinstance(k_half, bool), "pass the number k (an int), not None"
    try:
        k_half = int(k_half)
    except (TypeError, ValueError):
        raise AssertionError(f"pass the number k (an int), got {k_half!r}") from None
    model, processor, _, small = _digits_vlm()
    heads = [h for h in _digits_vlm_somp().heads if h[0] != 0]
    assert 1 <= k_half <= len(heads), f"k must be between 1 and {len(heads)} (the heads outside layer 0), got {k_half}"
    # on the 100 digits of digits_dataset("test", per_class=10), as the exercise says
    evaluate = digits_vlm.evaluator(model, processor, small["image"], small["label"], "word")
    base = evaluate()["accuracy"]

    def left(k: int) -> float:
        with scale_heads(model, {h: -1.0 for h in heads[:k]}):
            return evaluate()["accuracy"] / base

    at = left(k_half)
    assert at < 0.5, (
        f"inverting the top {k_half} SOMP heads outside layer 0 leaves {at:.2f} of the accuracy, not less than half"
        + ("; did you include layer 0's heads?" if k_half < len(heads) else "")
    )
    for k in range(1, k_half):
        smaller = left(k)
        assert smaller >= 0.5, f"k = {k} already leaves {smaller:.2f} of the accuracy: look for the smallest k"
