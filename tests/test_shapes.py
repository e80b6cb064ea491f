"""The synthetic scenes, the shapes-vlm construction (untrained) and the vision metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hp_mini
from hp_mini.vision import metrics, shapes, vlm


def test_dataset_is_deterministic_and_prefix_stable():
    a = shapes.shapes_dataset(12, seed=3)
    b = shapes.shapes_dataset(12, seed=3)
    c = shapes.shapes_dataset(5, seed=3)
    d = shapes.shapes_dataset(12, seed=4)
    pa, pb = shapes.scene_pixels(a["image"]), shapes.scene_pixels(b["image"])
    assert np.array_equal(pa, pb)
    assert a["caption"] == b["caption"] and a["attributes"] == b["attributes"]
    assert np.array_equal(shapes.scene_pixels(c["image"]), pa[:5])
    assert not np.array_equal(shapes.scene_pixels(d["image"]), pa)
    tail = shapes.shapes_dataset(4, seed=3, start=8)
    assert tail["caption"] == a["caption"][8:]


def test_columns_and_types():
    ds = shapes.shapes_dataset(6, seed=0)
    assert ds.column_names == ["image", "caption", "questions", "answers", "attributes"]
    row = ds[0]
    assert row["image"].size == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE) and row["image"].mode == "RGB"
    assert len(row["questions"]) == len(row["answers"]) == len(shapes.ATTRIBUTES)
    assert set(row["attributes"]) == set(shapes.ATTRIBUTES)


def test_answers_and_captions_agree_with_attributes():
    ds = shapes.shapes_dataset(200, seed=1)
    for row in ds:
        a = row["attributes"]
        answers = dict(zip(row["questions"], row["answers"]))
        assert answers[shapes.QUESTIONS["colour"]] == a["colour"] and a["colour"] in shapes.COLOURS
        assert answers[shapes.QUESTIONS["shape"]] == a["shape"] and a["shape"] in shapes.SHAPES
        assert answers[shapes.QUESTIONS["count"]] == shapes.COUNT_WORDS[a["count"]] and a["count"] in shapes.COUNTS
        assert answers[shapes.QUESTIONS["size"]] == a["size"]
        assert answers[shapes.QUESTIONS["position"]] == a["position"]
        parsed = metrics.parse_caption(row["caption"])
        assert parsed == {**a, "count": int(a["count"])}, row["caption"]
    # every value of every attribute occurs
    for key, values in [("colour", shapes.COLOURS), ("shape", shapes.SHAPES), ("count", shapes.COUNTS)]:
        assert {a[key] for a in ds["attributes"]} == set(values)


def test_pixels_show_the_stated_scene():
    """Count connected blobs of the scene colour on the stated side: they match count and position."""
    from scipy import ndimage

    for scene in shapes.scenes(60, seed=2):
        px = np.asarray(shapes.render_scene(scene)).astype(int)
        on = np.abs(px - np.array(shapes.BACKGROUND)).sum(-1) > 60
        labels, n = ndimage.label(on)
        assert n == scene.count, scene
        cols = np.nonzero(on)[1]
        half = shapes.IMAGE_SIZE / 2
        assert (cols < half).all() if scene.position == "left" else (cols >= half).all(), scene
        dist = np.abs(px - np.array(shapes.BACKGROUND)).sum(-1)
        colour = px[dist >= 0.95 * dist.max()].mean(0)  # fully covered pixels, not blended edges
        nearest = min(shapes.COLOURS, key=lambda c: np.abs(np.array(shapes.COLOURS[c]) - colour).sum())
        assert nearest == scene.colour


def test_processor_expands_image_token_and_matches_training_pixels():
    processor = vlm.build_processor()
    ds = shapes.shapes_dataset(3, seed=5)
    prompts = [vlm.caption_prompt(), vlm.question_prompt(shapes.QUESTIONS["count"]), vlm.caption_prompt()]
    batch = processor(text=prompts, images=list(ds["image"]), return_tensors="pt", padding=True)
    image_id = processor.tokenizer.convert_tokens_to_ids(vlm.IMAGE_TOKEN)
    n = (shapes.IMAGE_SIZE // vlm.PATCH_SIZE) ** 2
    assert ((batch["input_ids"] == image_id).sum(1) == n).all()
    assert (processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][1].tolist())[n:]
            == shapes.QUESTIONS["count"].split())
    torch.testing.assert_close(batch["pixel_values"], vlm.scene_pixel_values(shapes.scenes(3, seed=5)), atol=1e-6, rtol=0)
    assert processor.tokenizer.decode(processor.tokenizer("two large red squares").input_ids) == "two large red squares"


def test_tiny_untrained_vlm_records_and_generates():
    processor = vlm.build_processor()
    model = vlm.build_vlm(processor.tokenizer, vision={"hidden_size": 16, "intermediate_size": 32,
                                                       "num_hidden_layers": 1, "num_attention_heads": 2},
                          text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4}).eval()
    ds = shapes.shapes_dataset(3, seed=5)
    prompts = [vlm.caption_prompt(), vlm.question_prompt(shapes.QUESTIONS["colour"]), vlm.caption_prompt()]
    acts = hp_mini.record_heads(model, processor, prompts, images=ds["image"], pool="image", progress=False)
    assert acts.z.shape == (3, 2, 4, 8)
    # the image tokens come first, so their pooled heads do not depend on the text after them
    same = hp_mini.record_heads(model, processor, [vlm.caption_prompt(), prompts[1]], images=[ds["image"][0]] * 2,
                                pool="image", progress=False)
    torch.testing.assert_close(same.z[0], same.z[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(same.z[0], acts.z[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(acts.z[0], acts.z[2]), "two different images gave the same pooled heads"
    alone = hp_mini.record_heads(model, processor, prompts[1:2], images=ds["image"][1:2], pool="image", progress=False)
    torch.testing.assert_close(acts.z[1], alone.z[0], rtol=1e-5, atol=1e-6)
    out = hp_mini.generate(model, processor, prompts, images=ds["image"], max_new_tokens=3)
    assert len(out) == 3 and all(isinstance(o, str) for o in out)
    alone_out = hp_mini.generate(model, processor, prompts[1:2], images=ds["image"][1:2], max_new_tokens=3)
    assert alone_out[0] == out[1], "left padding changed a greedy continuation"


def test_caption_attribute_accuracy_and_keywords():
    truth = [{"colour": "red", "shape": "circle", "count": 3, "size": "small", "position": "left"}] * 2
    caps = ["three small red circles on the left", "three small circles on the left"]
    acc = metrics.caption_attribute_accuracy(caps, truth)
    assert acc["colour"] == 0.5 and acc["shape"] == 1.0 and acc["all"] == 0.5
    assert metrics.keyword_counts(caps, metrics.COLOUR_WORDS) == [1, 0]
    assert metrics.classification_accuracy(["red", "blue square"], ["red", "blue"]) == 1.0
    with pytest.raises(ValueError, match="predictions"):
        metrics.classification_accuracy(["red"], ["red", "blue"])


def test_bleu_by_hand():
    assert metrics.bleu(["a b c d"], ["a b c d"]) == pytest.approx(1.0)
    # candidate "a b c e" vs "a b c d": p1=3/4 p2=2/3 p3=1/2 p4=0 -> 0
    assert metrics.bleu(["a b c e"], ["a b c d"]) == 0.0
    # max_n=2, brevity penalty: candidate 3 words, reference 4
    p = math.sqrt(1.0 * 1.0) * math.exp(1 - 4 / 3)
    assert metrics.bleu(["a b c"], ["a b c d"], max_n=2) == pytest.approx(p)
    # clipping: "the the the" against "the cat": p1 = 1/3
    assert metrics.bleu(["the the the"], ["the cat"], max_n=1) == pytest.approx(1 / 3)


def test_foreground_weights_sit_on_the_shapes():
    scenes = shapes.scenes(6, seed=2)
    w = vlm.foreground_weights(vlm.scene_pixel_values(scenes))
    n_side = shapes.IMAGE_SIZE // vlm.PATCH_SIZE
    assert w.shape == (6, n_side**2)
    torch.testing.assert_close(w.sum(1), torch.ones(6))
    for row, scene in zip(w, scenes):
        cols = torch.arange(n_side**2) % n_side
        left = row[cols < n_side // 2].sum()
        # the shapes sit in one half, so that half holds (almost) all the weight
        assert (left > 0.95) if scene.position == "left" else (left < 0.05), (scene, row)


def test_training_is_deterministic_and_the_probes_learn():
    tiny = {"train_scenes": 64, "probe_steps": 30, "probe_batch_size": 16, "steps": 3, "batch_size": 4,
            "warmup": 2, "vision": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                    "num_attention_heads": 2},
            "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}}
    a, _, log_a = vlm.train_shapes_vlm(progress=False, settings=tiny)
    b, _, log_b = vlm.train_shapes_vlm(progress=False, settings=tiny)
    assert log_a["losses"] == log_b["losses"] and log_a["probe_losses"] == log_b["probe_losses"]
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert len(log_a["probe_losses"]) == 30 and len(log_a["losses"]) == 3
    assert np.mean(log_a["probe_losses"][-5:]) < np.mean(log_a["probe_losses"][:5]), "the probe loss did not fall"
