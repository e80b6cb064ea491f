"""gemma3-llava: the LLaVA recipe around Gemma-3-270M (tokenizer, prompt, projector init, training command, loading)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import train_tiny_llava

import hp_mini
from hp_mini.vision import digits, llava

GEMMA = llava.GEMMA3_RECIPE
SHIPPED_RECORD = GEMMA.record_file


@pytest.fixture(scope="module")
def gemma():
    """``hp_mini.load_model("gemma3-270m")``: the language model and its tokenizer."""
    return hp_mini.load_model("gemma3-270m", progress=False)


# --------------------------------------------------------------------------- #
# Fast: nothing is loaded
# --------------------------------------------------------------------------- #


def test_shipped_gemma_file_has_the_recorded_hash_size_notice_and_accuracy():
    record = json.loads(SHIPPED_RECORD.read_text())
    assert llava.file_sha256(GEMMA.weights_file) == GEMMA.weights_sha256 == record["sha256"]
    assert GEMMA.weights_file.stat().st_size == record["bytes"]
    assert record["name"] == "gemma3-llava" and record["notice"] == hp_mini.GEMMA_TERMS_NOTICE
    assert record["training"]["settings"] == json.loads(json.dumps(llava.TRAINING))
    held = record["held_out"]  # benchmarks/llava_accuracy.py --record
    assert held["digits"] == 1000 and min(held["name_accuracy"], held["numeral_accuracy"]) >= 0.9


def test_readme_states_the_shipped_gemma_figures():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## gemma3-llava"):]
    section = section[: section.index("\n## ")]
    record = json.loads(SHIPPED_RECORD.read_text())
    held, training = record["held_out"], record["training"]
    for figure in (f"{100 * held['name_accuracy']:.1f} %", f"{100 * held['numeral_accuracy']:.1f} %",
                   f"{held['digits']:,} MNIST", f"{record['bytes']:,} bytes", f"took {training['seconds']:,.0f} s",
                   f"{training['tower_seconds']:,.0f} s for the tower",
                   f"{training['projector_seconds']:,.0f} s for the projector", f"on {training['threads']} threads",
                   "237 tensors bit-identical"):
        assert figure in section, figure
    assert held["scenes"] == 100 and held["caption_accuracy"]["exact"] == 1.0 and "all 100" in section


def test_a_recipe_without_shipped_weights_names_the_train_command(tmp_path):
    unshipped = replace(GEMMA, weights_sha256=None)
    with pytest.raises(hp_mini.ModelNotAvailableError,
                       match=r"gemma3-llava: hp_mini ships no trained weights .*`python -m hp_mini train gemma3-llava"):
        llava.load_llava(unshipped)
    missing = tmp_path / "weights.safetensors"
    with pytest.raises(hp_mini.ModelNotAvailableError,
                       match=r"no trained weights at .*: train them with `python -m hp_mini train gemma3-llava --out"):
        llava.load_llava("gemma3-llava", missing)
    with pytest.raises(ValueError, match="unknown LLaVA 'gemma-llava'"):
        llava.load_llava("gemma-llava")


def test_a_damaged_shipped_gemma_file_says_reinstall_through_load_model(tmp_path, monkeypatch):
    copy = tmp_path / "weights.safetensors"
    copy.write_bytes(GEMMA.weights_file.read_bytes()[:-100])  # truncated
    monkeypatch.setattr(llava, "GEMMA3_RECIPE", replace(GEMMA, weights_file=copy))
    with pytest.raises(hp_mini.ModelNotAvailableError, match="reinstall hp_mini"):
        hp_mini.load_model("gemma3-llava")


def test_gemma3_llava_is_a_registered_name_built_on_gemma():
    assert "gemma3-llava" in hp_mini.model_names()
    assert hp_mini.model.loading.base_model("gemma3-llava") == GEMMA.base_model == "gemma3-270m"


def test_smollm2_weights_are_refused_as_gemma_weights():
    with pytest.raises(hp_mini.ModelNotAvailableError, match="holds the weights of .*not of gemma3-llava"):
        llava.load_llava("gemma3-llava", llava.WEIGHTS_FILE, sha256=llava.WEIGHTS_SHA256)


# --------------------------------------------------------------------------- #
# Gemma's tokenizer and prompt (slow: loads Gemma-3-270M)
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_gemma_tokenizer_renames_unused0_to_image_and_nothing_else(gemma):
    _, tokenizer = gemma
    renamed = llava.build_tokenizer(tokenizer, GEMMA)
    before, after = tokenizer.get_vocab(), renamed.get_vocab()
    assert len(after) == len(before)
    changed = {t: i for t, i in after.items() if before.get(t) != i}
    assert changed == {llava.IMAGE_TOKEN: 6}
    assert before["<unused0>"] == 6 and "<unused0>" not in after
    assert renamed.encode(llava.IMAGE_TOKEN, add_special_tokens=False) == [6]
    for special in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(renamed, special) == getattr(tokenizer, special), special
    text = "Which digit is this? seven 7 <start_of_turn>model\n"
    assert renamed(text)["input_ids"] == tokenizer(text)["input_ids"]
    with pytest.raises(ValueError, match="token 16 of this tokenizer is not '<empty_output>'"):
        llava.build_tokenizer(tokenizer)  # SmolLM2's recipe on Gemma's tokenizer


@pytest.mark.slow
def test_gemma_prompt_renders_turn_tokens_and_one_image_expanded_to_17(gemma):
    _, tokenizer = gemma
    processor = llava.build_processor(tokenizer, "gemma3-llava")
    text = llava.prompt(processor, "name")
    assert text == ("<start_of_turn>user\n<image>\nWhich digit is this? Answer with its name.<end_of_turn>\n"
                    "<start_of_turn>model\n")
    image = digits.digits_dataset("test", n=1)["image"]
    ids = processor(text=[text], images=image, return_tensors="pt")["input_ids"][0].tolist()
    assert llava.N_IMAGE_TOKENS == 17 and ids.count(6) == 17
    first = ids.index(6)
    assert ids[:first] == [2, 105, tokenizer.convert_tokens_to_ids("user"), 107]  # <bos> once, added by the tokenizer
    assert ids[first : first + 17] == [6] * 17 and ids[first + 17] == 107
    assert ids.count(2) == 1 and ids.count(106) == 1 and ids[-3:] == [105, tokenizer.convert_tokens_to_ids("model"), 107]
    assert llava.end_ids(processor.tokenizer, GEMMA) == [106, 1]
    with pytest.raises(ValueError, match=r"lacks smollm2-llava's end tokens \['<\|im_end\|>'\]"):
        llava.end_ids(processor.tokenizer)


@pytest.mark.slow
def test_projector_init_rms_matches_embedding_output_rms():
    from transformers import CLIPVisionConfig

    recipe = llava.GEMMA3_RECIPE
    assert recipe.projector_scale is None  # measured, not a constant
    lm, tokenizer = hp_mini.load_model(recipe.base_model, progress=False)
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", add_special_tokens=False,
                    return_tensors="pt")["input_ids"]
    with torch.no_grad():
        text_rms = float(lm.get_input_embeddings()(ids).pow(2).mean().sqrt())
        raw_rms = float(lm.get_input_embeddings().weight[ids].pow(2).mean().sqrt())
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_attention_heads=4)
    proj = llava.build_projector(vision, lm.config, target_rms=llava.embedding_rms(lm, tokenizer))
    features = torch.randn(64, 17, 128, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        image_rms = float(proj(features).pow(2).mean().sqrt())
    assert abs(image_rms / text_rms - 1) < 0.1, (image_rms, text_rms)
    assert text_rms > 10 * raw_rms  # the module's output: the rows times sqrt(640), not the rows


def test_smollm2_retraining_starts_the_projector_where_its_shipped_weights_started():
    """The shipped weights were trained from a projector whose second layer was scaled by 0.15;
    the recipe keeps that start, so `python -m hp_mini train smollm2-llava` reproduces them."""
    from transformers import CLIPVisionConfig

    lm, _ = hp_mini.load_model("smollm2-135m", progress=False)
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_attention_heads=4)
    plain = llava.build_projector(vision, lm.config, seed=0)
    start = llava.build_projector(vision, lm.config, seed=0, scale=llava.SMOLLM2_RECIPE.projector_scale)
    assert llava.SMOLLM2_RECIPE.projector_scale == 0.15
    assert torch.equal(start.linear_1.weight, plain.linear_1.weight)
    assert torch.equal(start.linear_2.weight, plain.linear_2.weight * 0.15)
    with pytest.raises(ValueError, match="not both"):
        llava.build_projector(vision, lm.config, scale=0.15, target_rms=1.0)


# --------------------------------------------------------------------------- #
# Training (slow: a tiny run through the command line)
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_tiny_training_through_the_cli_writes_a_loadable_file(tmp_path, capsys):
    out = tmp_path / "run" / "weights.safetensors"
    record = train_tiny_llava("gemma3-llava", out)
    assert "hp_mini train gemma3-llava: wrote" in capsys.readouterr().out
    assert record["notice"] == hp_mini.GEMMA_TERMS_NOTICE and "Gemma Terms of Use" in record["what_ships"]
    assert "Gemma-3-270M" in record["what_ships"]
    model, processor = llava.load_llava("gemma3-llava", out)  # checks the recorded SHA-256
    assert model.config.image_token_id == 6 and model.generation_config.eos_token_id == [106, 1]
    assert model.config.vision_config.num_hidden_layers == 1
    assert model.config.hp_mini_training["settings"]["clip_steps"] == llava.TINY["clip_steps"]
    assert llava.check_language_model(model, "gemma3-llava") == 237
    with pytest.raises(AssertionError, match="differs from load_model|different tensors"):
        llava.check_language_model(model)  # against SmolLM2: not the same model
    images = digits.digits_dataset("test", n=2)["image"]
    assert len(llava.ask(model, processor, images, "numeral")) == 2
    out.write_bytes(out.read_bytes()[:-1] + bytes([out.read_bytes()[-1] ^ 1]))
    with pytest.raises(hp_mini.ModelNotAvailableError, match="SHA-256 .* expected " + record["sha256"]):
        llava.load_llava("gemma3-llava", out)


# --------------------------------------------------------------------------- #
# The shipped model (slow: loads Gemma-3-270M)
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_shipped_gemma_weights_load_by_name_and_answer_held_out_digits_and_scenes():
    from hp_mini.vision import shapes

    model, processor = hp_mini.load_model("gemma3-llava", progress=False)
    assert type(model).__name__ == "LlavaForConditionalGeneration" and not model.training
    assert llava.check_language_model(model, "gemma3-llava") == 237
    test = digits.digits_dataset("test", per_class=2)  # 20 held-out digits, two of each
    for task in ("name", "numeral"):
        got = llava.ask(model, processor, test["image"], task)
        right = sum(g == w for g, w in zip(got, llava.answers_of(task, test["label"])))
        assert right >= 18, f"{task}: {right} of 20 right ({got})"
    scene_list = shapes.scenes(4, seed=7)
    got = llava.describe(model, processor, [shapes.render_scene(s) for s in scene_list])
    assert llava.caption_accuracy(got, scene_list)["all"] >= 0.75, got
    notice = (GEMMA.weights_file.parent / "NOTICE").read_text()
    assert notice.strip() == hp_mini.GEMMA_TERMS_NOTICE


def test_held_out_figures_already_recorded_are_not_replaced_without_overwrite():
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "llava_accuracy.py"
    before = SHIPPED_RECORD.read_bytes()
    out = subprocess.run([sys.executable, str(script), "--model", "gemma3-llava", "--record"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "already holds held-out figures: pass --overwrite" in out.stderr
    assert SHIPPED_RECORD.read_bytes() == before


def test_a_missing_training_record_says_how_to_restore_it(tmp_path, monkeypatch):
    assert llava.shipped_record("gemma3-llava")["sha256"] == GEMMA.weights_sha256
    monkeypatch.setattr(llava, "RECIPES", {**llava.RECIPES, "gemma3-llava": replace(
        GEMMA, weights_file=tmp_path / "weights.safetensors")})
    with pytest.raises(hp_mini.ModelNotAvailableError, match="no readable training record .*reinstall hp_mini"):
        llava.shipped_record("gemma3-llava")
