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
def _llava():
    """``smollm2-llava``, loaded once per process for the checks."""
    from hp_mini.model.loading import load_model

    return load_model("smollm2-llava", progress=False)


def _reader_answer(answer) -> tuple[tuple[int, int], float, float]:
    keys = {"head", "share", "accuracy_left"}
    assert isinstance(answer, dict) and keys <= set(answer), (
        f"pass a dict with the keys {sorted(keys)}; got {answer!r:.80}"
    )
    try:
        head = tuple(int(v) for v in answer["head"])
    except (TypeError, ValueError):
        raise AssertionError(f"answer['head'] must be a (layer, head) pair of ints, got {answer['head']!r}") from None
    assert len(head) == 2, f"answer['head'] must be a (layer, head) pair, got {answer['head']!r}"
    try:
        share, left = float(answer["share"]), float(answer["accuracy_left"])
    except (TypeError, ValueError):
        raise AssertionError("answer['share'] and answer['accuracy_left'] must be numbers") from None
    return head, share, left  # type: ignore[return-value]


@checker("vlm.image_reader")
def _check_image_reader(answer) -> None:
    """``{"head": (layer, head), "share": float, "accuracy_left": float}`` on smollm2-llava.

    On the 10 digits of ``digits_dataset("test", per_class=1)`` and the
    ``"name"`` question: the head whose attention at the answer position falls
    most on the image tokens, that share, and the exact-match accuracy left
    (divided by the unedited one) when the 8 heads of layers 1 and up that read
    the image most are removed together (alpha = 0).
    """
    from hp_mini.edit.scaling import scale_heads
    from hp_mini.experiments.vision import image_attention, top_heads
    from hp_mini.model.sites import head_label
    from hp_mini.vision import digits, llava

    head, share, left = _reader_answer(answer)
    model, processor = _llava()
    test = digits.digits_dataset("test", per_class=1)
    text = llava.prompt(processor, "name")
    reads = image_attention(model, processor, test["image"], text)
    n_layers, n_heads = reads.shape
    assert 0 <= head[0] < n_layers and 0 <= head[1] < n_heads, (
        f"smollm2-llava has {n_layers} layers of {n_heads} heads; {head} is not one of them"
    )
    best = top_heads(reads, 1)[0]
    if head != best:
        before = top_heads(image_attention(model, processor, test["image"], text, position=-2), 1)[0]
        raise AssertionError(
            f"{head_label(*head)} gives {float(reads[head]):.3f} of its attention at the answer position to the "
            f"image, {head_label(*best)} gives {float(reads[best]):.3f}"
            + (": you read the position before; read the last one (position=-1)" if head == before
               else ": take the largest share at the last position")
        )
    assert abs(share - float(reads[best])) <= 0.005, (
        f"{head_label(*best)} gives {float(reads[best]):.3f} of its attention to the image tokens, not {share:.3f}: "
        "sum its attention weights over the image positions, then average over the digits"
    )
    readers = [h for h in top_heads(reads) if h[0] >= 1][:8]
    evaluate = llava.evaluator(model, processor, test["image"], test["label"], "name")
    base = evaluate()["accuracy"]
    with scale_heads(model, {h: 0.0 for h in readers}):
        edited = evaluate()["accuracy"]
    want = edited / base
    if abs(left - edited) < 1e-9 and abs(left - want) > 1e-9:
        raise AssertionError("that is the accuracy itself: divide it by the unedited accuracy")
    assert abs(left - want) <= 0.01, (
        f"removing the 8 heads of layers 1 and up that read the image most ({', '.join(head_label(*h) for h in readers)}) "
        f"leaves {want:.2f} of the accuracy, not {left:.2f}"
    )
