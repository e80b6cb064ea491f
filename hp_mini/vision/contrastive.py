"""Contrastive training of hp_mini's open_clip towers: one trainer, any data set.

``shapes-clip`` and ``digits-clip`` are the same open_clip CLIP
(:func:`hp_mini.vision.shapes_clip.build_shapes_clip`) trained the same way on
two data sets. What differs is only how a batch is drawn, so a data set is a
function ``draw(step) -> (pixels, texts, match)``:

- ``pixels``: ``[n, 3, H, W]`` normalised images;
- ``texts``: ``n`` descriptions, text ``j`` paired with image ``j``;
- ``match``: ``[n, n]`` float, 1 where text ``j`` fits image ``i``.

A description such as "red shapes" or "seven" fits many images of a batch, so
the loss (:func:`multi_positive_clip_loss`) spreads each image's target
uniformly over all the texts that fit it, and each text's over all the images
it fits, instead of CLIP's diagonal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BatchDraw", "TrainingRecipe", "decayed_adamw", "multi_positive_clip_loss", "train_contrastive",
           "warmup_cosine_lr"]

BatchDraw = Callable[[int], "tuple[torch.Tensor, list[str], torch.Tensor]"]
"""A data set for :func:`train_contrastive`: ``draw(step) -> (pixels, texts, match)``."""


class TrainingRecipe(Protocol):
    """What :func:`train_contrastive` reads of a recipe (:class:`~hp_mini.vision.shapes_clip.ShapesCLIPConfig`)."""

    steps: int
    lr: float
    warmup: int
    weight_decay: float


def multi_positive_clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                             match: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss with every fitting pair a target.

    Parameters
    ----------
    image_embeds, text_embeds : Tensor ``[n, d]``
        Unnormalised embeddings of the batch's images and texts.
    logit_scale : Tensor
        The log of the temperature's inverse (capped at 100 once exponentiated, as in CLIP).
    match : Tensor ``[n, n]``
        1 where text ``j`` fits image ``i``; every row and column holds at least one 1.

    Returns
    -------
    Tensor
        The mean of the image-to-text and text-to-image cross-entropies against
        the uniform distributions over the fitting pairs.
    """
    img = F.normalize(image_embeds, dim=-1)
    txt = F.normalize(text_embeds, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.T
    loss_i = -(match / match.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(match / match.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (loss_i + loss_t) / 2


def decayed_adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (not on embeddings, norms or biases)."""
    decay = [p for n_, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n_]
    other = [p for n_, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n_)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}],
                             lr=lr)


def warmup_cosine_lr(step: int, recipe: TrainingRecipe) -> float:
    """The learning rate at ``step``: linear warm-up to ``recipe.lr``, then a cosine down to 0."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * 0.5 * (1 + np.cos(np.pi * t))


def train_contrastive(model, tokenizer, draw: BatchDraw, recipe: TrainingRecipe, *, desc: str,
                      progress: bool = True) -> float:
    """Train an open_clip ``model`` in place on the batches ``draw`` gives; returns the seconds it took.

    Parameters
    ----------
    model : open_clip.CLIP
        Trained in place, left in eval mode.
    tokenizer : callable
        Texts to token ids, ``[n, context_length]``.
    draw : callable ``step -> (pixels, texts, match)``
        The data set (see the module's docstring); called once per step, in order,
        so that a seeded ``draw`` makes the training deterministic.
    recipe : ShapesCLIPConfig or any object with ``steps``, ``lr``, ``warmup`` and ``weight_decay``
        AdamW (:func:`decayed_adamw`) under :func:`warmup_cosine_lr`.
    desc : str
        The progress bar's label.
    progress : bool, default True
        Show a progress bar with the loss.

    Returns
    -------
    float
        Wall time of the training, in seconds.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    opt = decayed_adamw(model, recipe.lr, recipe.weight_decay)
    model.train()
    bar = tqdm(range(recipe.steps), desc=desc, leave=False, disable=not progress)
    for step in bar:
        pixels, texts, match = draw(step)
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(step, recipe)
        image_embeds = model.encode_image(pixels)
        loss = multi_positive_clip_loss(image_embeds, model.encode_text(tokenizer(texts)), model.logit_scale, match)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return time.perf_counter() - t0
