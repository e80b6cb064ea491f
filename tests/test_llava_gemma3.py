"""gemma3-llava: the LLaVA recipe around Gemma-3-270M (tokenizer, prompt, projector init, training command, loading)."""

from __future__ import annotations

import pytest
import torch
from helpers import train_tiny_llava

import hp_mini
from hp_mini.vision import digits, llava

GEMMA = llava.GEMMA3_RECIPE


@pytest.fixture(scope="module")
def gemma():
    """``hp_mini.load_model("gemma3-270m")``: the language model and its tokenizer."""
    return hp_mini.load_model("gemma3-270m", progress=False)


# --------------------------------------------------------------------------- #
# Fast: nothing is loaded
# --------------------------------------------------------------------------- #


def test_missing_gemma_weights_error_names_the_train_command(tmp_path):
    assert not GEMMA.weights_file.exists() and GEMMA.weights_sha256 is None
    with pytest.raises(hp_mini.ModelNotAvailableError,
                       match=r"gemma3-llava: hp_mini ships no trained weights .*`python -m hp_mini train gemma3-llava"):
        llava.load_llava("gemma3-llava")
    missing = tmp_path / "weights.safetensors"
    with pytest.raises(hp_mini.ModelNotAvailableError,
                       match=r"no trained weights at .*: train them with `python -m hp_mini train gemma3-llava --out"):
        llava.load_llava("gemma3-llava", missing)
    assert "gemma3-llava" not in hp_mini.model_names()
    with pytest.raises(ValueError, match="unknown LLaVA 'gemma-llava'"):
        llava.load_llava("gemma-llava")


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
