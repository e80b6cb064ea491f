"""Recording the heads of an open_clip image encoder, in the residual stream or in CLIP's joint space.

:func:`record_image_heads` records each head's output ``z_h`` at the CLS token
(or pooled over the patches) of a model split by
:func:`hp_mini.model.open_clip.split_heads`. With ``space="joint"`` each
head's CLS contribution is mapped through ``ln_post`` and the final projection
(:func:`joint_space_map`) into the space where the text embeddings live, so that
text embeddings of prompts (:func:`hp_mini.vision.zero_shot.text_dictionary`)
are a dictionary for :func:`hp_mini.somp`.

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

import contextlib
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from hp_mini.model.open_clip import open_clip_heads, tower_blocks
from hp_mini.model.sites import LayerHeads
from hp_mini.record.activations import HeadActivations, HeadStore, select_layers

__all__ = ["ImagePool", "image_batch", "joint_space_map", "record_image_heads"]

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


def record_image_heads(
    model: nn.Module,
    processor,
    images,
    *,
    pool: ImagePool = "cls",
    space: Literal["residual", "joint"] = "residual",
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    store: Literal["samples", "moments"] = "samples",
    texts: Sequence[str] | None = None,
    progress: bool = False,
) -> HeadActivations:
    """Record each image-encoder head's output, pooled over image tokens.

    Parameters
    ----------
    model : open_clip CLIP
        Split with :func:`~hp_mini.model.open_clip.split_heads` (``load_model("shapes-clip")`` is).
    processor : ShapesCLIPProcessor or callable
        Turns a list of PIL images into a pixel tensor (``processor(images=...)["image"]``);
        a plain callable mapping one image to a tensor (open_clip's preprocess) works too.
        If ``images`` is already a tensor ``[n, 3, H, W]`` it is used as is.
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
    texts : list of str, optional
        Labels of the rows (e.g. the captions), kept in ``acts.texts``.

    Returns
    -------
    HeadActivations
        ``z [n, layers, heads, d_head]``; ``W_O [layers, heads, d_model or embed_dim, d_head]``.
    """
    if pool not in ("cls", "patches", "all"):
        raise ValueError(f"pool must be 'cls', 'patches' or 'all', got {pool!r}")
    if space not in ("residual", "joint"):
        raise ValueError(f"space must be 'residual' or 'joint', got {space!r}")
    if space == "joint" and pool != "cls":
        raise ValueError("space='joint' needs pool='cls': only the CLS token reaches the image embedding")
    if store not in ("samples", "moments"):
        raise ValueError(f"store must be 'samples' or 'moments', got {store!r}")
    pixels = image_batch(processor, images)
    n = pixels.shape[0]
    if texts is not None and len(texts) != n:
        raise ValueError(f"got {len(texts)} texts for {n} images")
    sites = select_layers(open_clip_heads(model), layers, "the image encoder")
    n_layers, n_heads, d_head = len(sites), sites[0].n_heads, sites[0].d_head
    collected = HeadStore(n, n_layers, n_heads, d_head, store)
    pooled: list[torch.Tensor | None] = [None] * n_layers
    sigma: dict[str, torch.Tensor] = {}

    def make_hook(i: int):
        def hook(module, args):
            z = args[0]  # [B, T, H*dh], batch first
            if pool == "cls":
                pooled[i] = z[:, 0]
            elif pool == "patches":
                pooled[i] = z[:, 1:].mean(1)
            else:
                pooled[i] = z.mean(1)

        return hook

    def keep_sigma(module, args):
        r = args[0]
        r = r[:, 0] if r.ndim == 3 else r
        sigma["s"] = torch.sqrt(r.float().var(-1, unbiased=False) + module.eps)

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as stack:
            for i, site in enumerate(sites):
                stack.callback(site.module.register_forward_pre_hook(make_hook(i)).remove)
            if space == "joint":
                stack.callback(model.visual.ln_post.register_forward_pre_hook(keep_sigma).remove)
            starts = range(0, n, batch_size)
            if progress:
                from tqdm.auto import tqdm

                starts = tqdm(starts, desc="recording heads", leave=False)
            with torch.no_grad():
                for start in starts:
                    chunk = pixels[start : start + batch_size].to(device)
                    model.encode_image(chunk)
                    z = torch.stack(pooled, 1).float().cpu().reshape(len(chunk), n_layers, n_heads, d_head)  # type: ignore[arg-type]
                    if space == "joint":
                        z = z / sigma["s"].cpu()[:, None, None, None]
                    collected.add(start, z)
    finally:
        model.train(was_training)

    if space == "joint":
        # The projection biases are not head contributions; in the joint space they are dropped.
        with torch.no_grad():
            return collected.finish(sites, texts, W_O=joint_space_map(model, sites), with_bias=False)
    return collected.finish(sites, texts)


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
