"""Recording the heads of an open_clip image encoder, in the residual stream or in CLIP's joint space.

:func:`record_image_heads` records each head's output ``z_h`` at the CLS token
(or pooled over the patches) of a model split by
:func:`hp_mini.model.open_clip.split_heads`. With ``space="joint"`` each
head's CLS contribution is mapped through ``ln_post`` and the final projection
(:func:`joint_space_map`) into the space where the text embeddings live, so that
text embeddings of prompts (:func:`hp_mini.vision.zero_shot.text_dictionary`)
are a dictionary for :func:`hp_mini.somp`. It runs the recorder core
(:mod:`hp_mini.record.core`) with :class:`ImageInputs` as its input adapter.

Example
-------
>>> import hp_mini
>>> from hp_mini.vision import shapes_dataset
>>> from hp_mini.record.images import record_image_heads
>>> images = shapes_dataset(8)["image"]
>>> model, processor = hp_mini.load_model("shapes-clip")           # doctest: +SKIP
>>> acts = record_image_heads(model, processor, images, space="joint")  # doctest: +SKIP
>>> acts.W_O.shape   # [layers, heads, embed_dim, d_head]           # doctest: +SKIP
torch.Size([4, 8, 64, 12])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from hp_mini.checks import check_count, renamed_keywords
from hp_mini.model.hooks import Trace
from hp_mini.model.open_clip import open_clip_heads, tower_blocks
from hp_mini.model.sites import LayerHeads
from hp_mini.record.activations import HeadActivations, Stored, check_store, record_rows
from hp_mini.record.core import Forward, choose_sites

__all__ = ["ImageInputs", "ImagePool", "image_batch", "joint_space_map", "record_image_heads"]

ImagePool = Literal["cls", "patches", "all"]


def joint_space_map(model: nn.Module, sites: list[LayerHeads] | None = None) -> torch.Tensor:
    """Each head's map from ``z_h`` into the joint embedding space, ``[layers, heads, embed_dim, d_head]``.

    The image embedding is ``proj^T ln_post(r)`` with ``r`` the final residual
    stream at the CLS token. ``ln_post(r) = g * C r / sigma + beta`` with ``C``
    the centring over features and ``sigma`` the (per-image) standard deviation
    of ``r``. So head ``h``'s share of the embedding is
    ``proj^T diag(g) C diag(s) W_O[h] z_h / sigma`` (``s``: the block's
    LayerScale, or 1). This returns ``proj^T diag(g) C diag(s) W_O[h]``; the
    division by ``sigma`` is per image (see :func:`record_image_heads`).
    """
    visual = model.visual
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "proj", None) is None:
        raise NotImplementedError("the joint-space map needs a ViT with a token pool and a linear `proj`")
    sites = sites if sites is not None else open_clip_heads(model)
    blocks = tower_blocks(model, "visual")
    g = visual.ln_post.weight.detach().float()
    proj = visual.proj.detach().float()  # [width, embed_dim]
    maps = []
    for site in sites:
        w = site.W_O.detach().float()  # [H, width, dh]
        ls = getattr(blocks[site.layer].ls_1, "gamma", None)
        if ls is not None:
            w = w * ls.detach().float()[None, :, None]
        w = w - w.mean(1, keepdim=True)  # C: centring over features
        w = w * g[None, :, None]
        maps.append(torch.einsum("we,hwk->hek", proj, w))
    return torch.stack(maps)


class ImageInputs:
    """Input adapter for the recorder core: images through an open_clip image tower.

    Parameters
    ----------
    model : open_clip CLIP
        Split with :func:`~hp_mini.model.open_clip.split_heads`.
    pixels : Tensor ``[n, 3, H, W]``
        From :func:`image_batch`.
    pool : {"cls", "patches", "all"}
        The positions each :class:`~hp_mini.record.core.Forward` selects: the
        same in every image (a slice), since image batches have no padding.
    joint : bool
        Divide each image's rows by the ``ln_post`` scale ``sigma`` of its
        CLS token (CLIP's joint space; see :func:`joint_space_map`).
    """

    def __init__(self, model: nn.Module, pixels: torch.Tensor, pool: ImagePool, joint: bool = False):
        self.model, self.pixels, self.joint = model, pixels, joint
        self.select = {"cls": slice(0, 1), "patches": slice(1, None), "all": slice(None)}[pool]
        self.device = next(model.parameters()).device

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def forward(self, start: int, stop: int) -> Forward:
        """The images ``start:stop`` on the model's device, and the positions to pool."""
        chunk = self.pixels[start:stop].to(self.device)
        if not self.joint:
            return Forward(run=lambda: self.model.encode_image(chunk), select=self.select, first=start)
        ln_post = Trace(self.model.visual.ln_post, retain_input=True)

        def run():
            with ln_post:
                self.model.encode_image(chunk)

        def divide(z: torch.Tensor) -> torch.Tensor:
            r = ln_post.input
            r = r[:, 0] if r.ndim == 3 else r
            sigma = torch.sqrt(r.float().var(-1, unbiased=False) + ln_post.module.eps)
            return z / sigma.cpu()[:, None, None, None]

        return Forward(run=run, select=self.select, first=start, finish=divide)


@renamed_keywords(texts="prompts")
def record_image_heads(
    model: nn.Module,
    processor,
    images,
    *,
    pool: ImagePool = "cls",
    space: Literal["residual", "joint"] = "residual",
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    store: Stored = "samples",
    prompts: Sequence[str] | None = None,
    progress: bool = False,
) -> HeadActivations:
    """Record each image-encoder head's output, pooled over image tokens.

    Parameters
    ----------
    model : open_clip CLIP
        Split with :func:`~hp_mini.model.open_clip.split_heads` (``load_model("shapes-clip")`` is).
    processor : ShapesCLIPProcessor or callable
        Turns images into pixels (see :func:`image_batch`); unused when
        ``images`` is already a tensor ``[n, 3, H, W]``.
    images : list of PIL images or Tensor
    pool : {"cls", "patches", "all"}
        ``"cls"``: the CLS token, the only position the image embedding reads
        (TextSpan's choice); ``"patches"``: the mean over the patch tokens (the
        Head Pursuit paper's choice for VLMs, whose language model reads the
        patches); ``"all"``: the mean over every token.
    space : {"residual", "joint"}
        ``"residual"``: ``W_O`` maps into the residual stream (width ``d_model``).
        ``"joint"`` (with ``pool="cls"``): ``W_O`` is replaced by
        :func:`joint_space_map` and each ``z`` is divided by its image's
        ``ln_post`` scale ``sigma``, so ``acts.head(l, h)`` is head ``h``'s
        exact additive share of the (unnormalised) image embedding.
    layers, batch_size, store, progress
        As in :func:`hp_mini.record_heads`.
    prompts : list of str, optional
        Labels of the rows (e.g. the captions), kept in ``acts.prompts``
        (``texts=`` is the old, deprecated name).

    Returns
    -------
    HeadActivations
        ``z [n, layers, heads, d_head]``; ``W_O [layers, heads, d_model or embed_dim, d_head]``.

    Raises
    ------
    ValueError
        An unknown ``pool``, ``space`` or ``store``, ``space="joint"`` without
        ``pool="cls"``, or a number of labels other than the number of images.
    IndexError
        A layer the image encoder does not have.
    """
    if pool not in ("cls", "patches", "all"):
        raise ValueError(f"pool must be 'cls', 'patches' or 'all', got {pool!r}")
    if space not in ("residual", "joint"):
        raise ValueError(f"space must be 'residual' or 'joint', got {space!r}")
    if space == "joint" and pool != "cls":
        raise ValueError("space='joint' needs pool='cls': only the CLS token reaches the image embedding")
    check_store(store)
    batch_size = check_count(batch_size, "batch_size")
    pixels = image_batch(processor, images)
    if prompts is not None and len(prompts) != pixels.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {pixels.shape[0]} images")
    sites = choose_sites(open_clip_heads(model), layers, "the image encoder")
    joint = space == "joint"  # the projection biases are not head contributions; in the joint space they are dropped
    with torch.no_grad():
        W_O = joint_space_map(model, sites) if joint else None
    return record_rows(model, sites, ImageInputs(model, pixels, pool, joint), prompts, store=store,
                       batch_size=batch_size, rows=len(pixels), progress=progress, W_O=W_O, with_bias=not joint)


def image_batch(processor, images) -> torch.Tensor:
    """The pixel tensor ``[n, 3, H, W]`` of a list of images, as an image encoder takes it.

    Parameters
    ----------
    processor : ShapesCLIPProcessor or callable
        An object with an ``image_transform`` (called as ``processor(images=...)["image"]``)
        or a plain callable mapping one image to a tensor (open_clip's preprocess).
    images : list of PIL images or Tensor
        A tensor is returned as it is.

    Returns
    -------
    Tensor
        ``[n, 3, H, W]``.
    """
    if isinstance(images, torch.Tensor):
        return images
    images = list(images)
    if hasattr(processor, "image_transform"):
        return processor(images=images)["image"]
    return torch.stack([processor(im) for im in images])
