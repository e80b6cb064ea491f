"""smollm2-llava: the shipped weights, their checks, hp_mini's pipeline on it, and its training command."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import train_tiny_llava
from PIL import Image

import hp_mini
from hp_mini.cli import main as cli_main
from hp_mini.vision import digits, llava, shapes

SHIPPED_RECORD = llava.SMOLLM2_RECIPE.record_file


@pytest.fixture(scope="module")
def shipped():
    """``load_model("smollm2-llava")``, with every training function made to fail; and its load time."""
    def no_training(*args, **kwargs):
        raise AssertionError("load_model('smollm2-llava') must not train")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("train", "pretrain_tower", "train_projector"):
            mp.setattr(llava, name, no_training)
        start = time.perf_counter()
        model, processor = hp_mini.load_model("smollm2-llava", progress=False)
        seconds = time.perf_counter() - start
    return model, processor, seconds


def _held_out_digits():
    test = digits.digits_dataset("test", per_class=2)  # 20 held-out digits, two of each
    return test["image"], test["label"]


# --------------------------------------------------------------------------- #
# The shipped file (fast: nothing is loaded)
# --------------------------------------------------------------------------- #


def test_shipped_file_has_the_recorded_hash_and_size():
    record = json.loads(SHIPPED_RECORD.read_text())
    assert llava.file_sha256(llava.WEIGHTS_FILE) == llava.WEIGHTS_SHA256 == record["sha256"]
    assert llava.WEIGHTS_FILE.stat().st_size == record["bytes"]
    assert record["training"]["settings"] == json.loads(json.dumps(llava.TRAINING))


def test_altered_weights_copy_gives_the_hash_error(tmp_path):
    copy = tmp_path / "weights.safetensors"
    data = bytearray(llava.WEIGHTS_FILE.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor
    copy.write_bytes(bytes(data))
    with pytest.raises(hp_mini.ModelNotAvailableError, match="SHA-256 .* expected " + llava.WEIGHTS_SHA256):
        llava.load_llava_smollm2(copy, sha256=llava.WEIGHTS_SHA256)
    # With the shipped training.json beside it, its recorded hash is checked without being asked.
    shutil.copy(SHIPPED_RECORD, tmp_path / llava.TRAINING_RECORD)
    with pytest.raises(hp_mini.ModelNotAvailableError, match="damaged or comes from another training"):
        llava.load_llava_smollm2(copy)


def test_corrupted_shipped_file_gives_the_hash_error_through_load_model(tmp_path, monkeypatch):
    copy = tmp_path / "weights.safetensors"
    copy.write_bytes(llava.WEIGHTS_FILE.read_bytes()[:-100])  # truncated
    monkeypatch.setattr(llava, "SMOLLM2_RECIPE", replace(llava.SMOLLM2_RECIPE, weights_file=copy))
    with pytest.raises(hp_mini.ModelNotAvailableError, match="reinstall hp_mini"):
        hp_mini.load_model("smollm2-llava")


def test_missing_weights_file_gives_a_clear_error(tmp_path, monkeypatch):
    missing = tmp_path / "gone" / "weights.safetensors"
    monkeypatch.setattr(llava, "SMOLLM2_RECIPE", replace(llava.SMOLLM2_RECIPE, weights_file=missing))
    with pytest.raises(hp_mini.ModelNotAvailableError, match="no trained weights at .*python -m hp_mini train"):
        hp_mini.load_model("smollm2-llava")
    with pytest.raises(hp_mini.ModelNotAvailableError, match="no trained weights") as info:
        llava.load_llava_smollm2(tmp_path / "other.safetensors")
    assert "reinstall" not in str(info.value)  # a file of the user's, not the shipped one


def test_file_that_is_not_safetensors_is_refused(tmp_path):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"not a weights file")
    with pytest.raises(hp_mini.ModelNotAvailableError, match="not a safetensors file"):
        llava.load_llava_smollm2(bad, sha256="")


def test_smollm2_llava_is_a_registered_name():
    assert "smollm2-llava" in hp_mini.model_names()


# --------------------------------------------------------------------------- #
# Bad input (fast: refused before any model is used)
# --------------------------------------------------------------------------- #


def test_bad_task_names_are_refused():
    with pytest.raises(ValueError, match=r"task must be one of \['name', 'numeral', 'caption'\], got 'colour'"):
        llava.answers_of("colour", [1])
    with pytest.raises(ValueError, match="accuracy scores digits"):
        llava.accuracy(None, None, [Image.new("RGB", (48, 48))], [1], task="caption")
    with pytest.raises(ValueError, match="evaluator scores digits"):
        llava.evaluator(None, None, [Image.new("RGB", (48, 48))], [1], task="colour")
    with pytest.raises(ValueError, match="task must be one of"):
        llava.ask(None, None, [Image.new("RGB", (48, 48))], "colour")


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="image 1 is 28 x 28 pixels; the model reads 48 x 48"):
        llava.ask(None, None, [Image.new("RGB", (48, 48)), Image.new("L", (28, 28))], "name")
    with pytest.raises(ValueError, match="not a single str"):
        llava.check_images("digit.png")
    with pytest.raises(ValueError, match="must not be empty"):
        llava.check_images([])
    with pytest.raises(ValueError, match="image 0 is an array float64"):
        llava.check_images([np.zeros((48, 48))])
    with pytest.raises(ValueError, match="labels must be ints 0..9"):
        llava.answers_of("numeral", [10])
    grey = np.zeros((48, 48), np.uint8)
    assert [im.mode for im in llava.check_images([grey, Image.new("L", (48, 48))])] == ["RGB", "RGB"]


def test_unknown_training_settings_are_refused():
    with pytest.raises(ValueError, match=r"unknown fields \['stepz'\]"):
        llava.train({"stepz": 3})
    with pytest.raises(ValueError, match="threads must be a positive int"):
        llava.train(llava.TINY, threads=0)


# --------------------------------------------------------------------------- #
# The command line's --out (fast: checked before the work)
# --------------------------------------------------------------------------- #


def test_cli_refuses_an_existing_out_without_overwrite(tmp_path, capsys):
    out = tmp_path / "weights.safetensors"
    out.write_bytes(b"earlier")
    assert cli_main(["train", "smollm2-llava", "--tiny", "--out", str(out)]) == 2
    assert "already exists: give --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"earlier"


def test_cli_refuses_an_existing_training_record_without_overwrite(tmp_path, capsys):
    (tmp_path / llava.TRAINING_RECORD).write_text("{}")
    assert cli_main(["train", "smollm2-llava", "--tiny", "--out", str(tmp_path / "w.safetensors")]) == 2
    assert "training.json already exists" in capsys.readouterr().err
    assert not (tmp_path / "w.safetensors").exists()


def test_cli_refuses_an_out_that_is_a_folder_or_not_safetensors(tmp_path, capsys):
    assert cli_main(["train", "smollm2-llava", "--tiny", "--out", str(tmp_path)]) == 2
    assert "is a folder; give the weights file" in capsys.readouterr().err
    assert cli_main(["train", "smollm2-llava", "--tiny", "--out", str(tmp_path / "w.bin")]) == 2
    assert "not a .safetensors file name" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# The shipped model (slow: loads SmolLM2)
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_shipped_weights_load_by_name_without_training(shipped):
    model, processor, seconds = shipped
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    assert not model.training
    vision = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    assert vision and not any(p.requires_grad for p in vision)
    assert model.config.hp_mini_training["settings"] == json.loads(json.dumps(llava.TRAINING))
    assert seconds < 120, f"loading took {seconds:.0f} s"


@pytest.mark.slow
def test_language_model_is_bit_identical_to_load_model(shipped):
    assert llava.check_language_model(shipped[0]) == 273


@pytest.mark.slow
def test_held_out_digits_get_their_name_and_numeral(shipped):
    model, processor, _ = shipped
    images, labels = _held_out_digits()
    for task in ("name", "numeral"):
        got = llava.ask(model, processor, images, task)
        right = sum(g == w for g, w in zip(got, llava.answers_of(task, labels)))
        assert right >= 18, f"{task}: {right} of 20 right ({got})"


@pytest.mark.slow
def test_held_out_scenes_get_their_caption(shipped):
    model, processor, _ = shipped
    scene_list = shapes.scenes(2, seed=7)
    got = llava.describe(model, processor, [shapes.render_scene(s) for s in scene_list])
    assert got == [shapes.caption_of(s) for s in scene_list]
    assert llava.caption_accuracy(got, scene_list)["exact"] == 1.0


@pytest.mark.slow
def test_record_heads_pools_the_image_tokens(shipped):
    model, processor, _ = shipped
    images, _ = _held_out_digits()
    prompts = [llava.prompt(processor, "name")] * 2
    pooled = hp_mini.record_heads(model, processor, prompts, images=images[:2], pool="image", progress=False)
    tokens = hp_mini.record_heads(model, processor, prompts, images=images[:2], pool=None, progress=False)
    assert pooled.z.shape == (2, 30, 9, 64)
    ids = processor(text=prompts, images=images[:2], return_tensors="pt")["input_ids"]
    for i in range(2):
        rows = tokens.positions[:, 0] == i
        is_image = ids[i][tokens.positions[rows, 1]] == llava.IMAGE_TOKEN_ID
        assert int(is_image.sum()) == llava.N_IMAGE_TOKENS
        torch.testing.assert_close(pooled.z[i], tokens.z[rows][is_image].mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_scale_heads_and_generate_work_on_the_model(shipped):
    model, processor, _ = shipped
    images, labels = _held_out_digits()
    images, labels = images[::2], labels[::2]  # one of each digit
    evaluate = llava.evaluator(model, processor, images, labels, "numeral")
    before = evaluate()
    assert before["accuracy"] >= 0.8
    # Through hp_mini.generate, greedy: its first tokens are the evaluator's answers.
    generated = hp_mini.generate(model, processor, [llava.prompt(processor, "numeral")] * 10, images=images,
                                 max_new_tokens=1)
    assert [g.strip() for g in generated] == evaluate.answers
    everything = {(layer, head): 0.0 for layer in range(30) for head in range(9)}
    with hp_mini.scale_heads(model, everything):
        ablated = evaluate()
    assert ablated["accuracy"] < before["accuracy"] - 0.5
    assert evaluate() == before  # restored on leaving the block


# --------------------------------------------------------------------------- #
# Training (slow: a tiny run of seconds through the command line)
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_tiny_training_through_the_cli_writes_a_loadable_file(tmp_path, capsys):
    out = tmp_path / "run" / "weights.safetensors"
    record = train_tiny_llava("smollm2-llava", out)
    assert "wrote" in capsys.readouterr().out
    assert "notice" not in record
    model, processor = llava.load_llava_smollm2(out)  # checks the recorded SHA-256
    assert model.config.vision_config.num_hidden_layers == 1
    assert model.config.hp_mini_training["settings"]["clip_steps"] == llava.TINY["clip_steps"]
    images, _ = _held_out_digits()
    assert len(llava.ask(model, processor, images[:2], "numeral")) == 2
