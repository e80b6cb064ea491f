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
def _image_reader_oracle():
    """The right answer of vlm.image_reader, computed here from the attention weights and generated answers."""
    import torch

    from hp_mini.vision import digits, llava

    model, processor = hp_mini.load_model("smollm2-llava", progress=False)
    test = digits.digits_dataset("test", per_class=1)
    batch = processor(text=[llava.prompt(processor, "name")] * len(test["image"]), images=test["image"],
                      return_tensors="pt")
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(**batch, output_attentions=True).attentions
    model.set_attn_implementation(before)
    image = batch["input_ids"] == llava.IMAGE_TOKEN_ID
    shares = torch.stack([a[:, :, -1, :].double().mul(image[:, None, :]).sum(-1).mean(0) for a in attentions])
    order = sorted(((float(shares[i, j]), (i, j)) for i in range(shares.shape[0]) for j in range(shares.shape[1])),
                   reverse=True)
    best = order[0][1]
    readers = [h for _, h in order if h[0] >= 1][:8]

    def accuracy():  # generated answers, not the checker's first-token evaluator
        got = llava.ask(model, processor, test["image"], "name", max_new_tokens=1)  # the first token
        return sum(g == digits.DIGIT_WORDS[y] for g, y in zip(got, test["label"])) / len(got)

    base = accuracy()
    with hp_mini.scale_heads(model, {h: 0.0 for h in readers}):
        edited = accuracy()
    second = order[1][1]
    return {"head": best, "share": float(shares[best]), "accuracy_left": edited / base}, second, edited


@pytest.mark.slow
def test_image_reader_accepts_the_right_answer_and_explains_wrong_ones():
    right, second, unnormalised = _image_reader_oracle()
    assert check("vlm.image_reader", right, quiet=True)
    with pytest.raises(ExerciseError, match="largest share at the last position|position before"):
        check("vlm.image_reader", {**right, "head": second}, quiet=True)
    with pytest.raises(ExerciseError, match="average over the digits"):
        check("vlm.image_reader", {**right, "share": right["share"] + 0.05}, quiet=True)
    if abs(unnormalised - right["accuracy_left"]) > 0.01:
        with pytest.raises(ExerciseError, match="divide it by the unedited accuracy"):
            check("vlm.image_reader", {**right, "accuracy_left": unnormalised}, quiet=True)
    with pytest.raises(ExerciseError, match="leaves"):
        check("vlm.image_reader", {**right, "accuracy_left": right["accuracy_left"] + 0.3}, quiet=True)
    with pytest.raises(ExerciseError, match="keys"):
        check("vlm.image_reader", (right["head"], right["share"]), quiet=True)
    with pytest.raises(ExerciseError, match="is not one of them"):
        check("vlm.image_reader", {**right, "head": (30, 0)}, quiet=True)
