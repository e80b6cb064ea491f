"""CLIP's joint image-text space as a classifier and as a dictionary.

:func:`text_dictionary` turns text embeddings of prompts into a
:class:`hp_mini.Dictionary` for :func:`hp_mini.somp` over heads recorded with
``space="joint"`` (:mod:`hp_mini.record.images`). :func:`zero_shot_predict`
and :func:`zero_shot_accuracies` classify images by their closest prompt;
inside a :func:`hp_mini.scale_heads` block the edits apply, which is how the
effect of a head edit on the model's behaviour is measured.

Example
-------
>>> import hp_mini
>>> from hp_mini.vision.shapes import render_scene, scenes
>>> from hp_mini.vision.zero_shot import zero_shot_accuracies
>>> test = scenes(100, seed=1)
>>> images = [render_scene(s) for s in test]
>>> model, processor = hp_mini.load_model("shapes-clip")           # doctest: +SKIP
>>> zero_shot_accuracies(model, processor, images, {"colour": [s.attributes()["colour"] for s in test]})  # doctest: +SKIP
{'colour': ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hp_mini.read.dictionary import Dictionary
from hp_mini.record.images import image_batch
from hp_mini.vision.scene_prompts import concept_prompts

__all__ = ["image_embeddings", "text_dictionary", "zero_shot_accuracies", "zero_shot_accuracy", "zero_shot_predict"]


def text_dictionary(model: nn.Module, processor, prompts: Sequence[str], *, normalize: bool = True) -> Dictionary:
    """Text embeddings of ``prompts`` as a :class:`hp_mini.Dictionary` in the joint space.

    ``atoms`` is ``[len(prompts), embed_dim]`` (L2-normalised rows unless
    ``normalize=False``), ``labels`` are the prompts. Heads recorded with
    :func:`~hp_mini.record.images.record_image_heads` with ``space="joint"`` write vectors of the same width.
    """
    prompts = list(prompts)
    tokens = processor.tokenizer(prompts) if hasattr(processor, "tokenizer") else processor(prompts)
    with torch.no_grad():
        emb = model.encode_text(tokens.to(next(model.parameters()).device)).float().cpu()
    return Dictionary(F.normalize(emb, dim=-1) if normalize else emb, prompts)


def image_embeddings(model: nn.Module, processor, images, *, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised image embeddings ``[n, embed_dim]`` (edits of an enclosing ``scale_heads`` apply)."""
    pixels = image_batch(processor, images)
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, pixels.shape[0], batch_size):
            out.append(model.encode_image(pixels[start : start + batch_size].to(device)).float().cpu())
    return F.normalize(torch.cat(out), dim=-1)


def zero_shot_predict(model: nn.Module, processor, images, prompts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
    """The index of the best-matching prompt for each image (cosine similarity), ``[n]``.

    Runs inside any :func:`hp_mini.scale_heads` block around it, so edits apply
    (to the image encoder; the text embeddings are those of the unedited text tower).
    """
    text = text_dictionary(model, processor, prompts).atoms
    return (image_embeddings(model, processor, images, batch_size=batch_size) @ text.T).argmax(-1)


def zero_shot_accuracies(
    model: nn.Module, processor, images, labels: dict[str, Sequence], *, batch_size: int = 256
) -> dict[str, float]:
    """Zero-shot accuracy per attribute, ``{attribute: accuracy}``, encoding the images once.

    ``labels`` maps an attribute (``"colour"``, ``"shape"``, ...) to the true
    value of each image; the prompts are those of :func:`~hp_mini.vision.scene_prompts.concept_prompts`.
    """
    emb = image_embeddings(model, processor, images, batch_size=batch_size)
    out = {}
    for attribute, truth in labels.items():
        values, prompts = concept_prompts(attribute)
        if len(truth) != emb.shape[0]:
            raise ValueError(f"{len(truth)} {attribute} labels for {emb.shape[0]} images")
        text = text_dictionary(model, processor, prompts).atoms
        target = torch.tensor([values.index(str(v)) for v in truth])
        out[attribute] = float(((emb @ text.T).argmax(-1) == target).float().mean())
    return out


def zero_shot_accuracy(model: nn.Module, processor, images, labels: Sequence, attribute: str, *, batch_size: int = 256) -> float:
    """Zero-shot accuracy on one attribute, with the prompts of :func:`~hp_mini.vision.scene_prompts.concept_prompts`."""
    return zero_shot_accuracies(model, processor, images, {attribute: labels}, batch_size=batch_size)[attribute]
