"""A small CLIP trained on the shapes scenes, and exact per-head work on open_clip models.

Three jobs, one module:

* **The head split.** open_clip's ``ResidualAttentionBlock`` calls
  ``nn.MultiheadAttention``, which applies its output projection inside
  ``F.multi_head_attention_forward``: the concatenated heads ``z`` never pass
  through a module, so no hook can see them. :func:`split_heads` replaces each
  block's attention by :class:`HeadwiseAttention`, which shares the very same
  parameters (the state dict is unchanged) and computes the same function, but
  calls ``out_proj`` as a module on ``z = concat_h z_h``. After it,
  :func:`hp_mini.attention_heads`, :func:`hp_mini.scale_heads` and the
  recording below work on the image encoder, as on a language model.
* **The model.** ``hp_mini.load_model("shapes-clip")`` builds an
  ``open_clip.CLIP`` (ViT image tower, 4 layers x 8 heads of width 12 on
  6 x 6 patches; a 2-layer text tower with a word-level tokenizer), trains it
  contrastively on the scenes of :mod:`hp_mini.vision.shapes` on the first
  call (a few minutes at most on a CPU; ``benchmarks/shapes_clip.py``
  measures it) and caches it under :func:`hp_mini.models.cache_dir`.
* **Recording and the joint space.** :func:`record_image_heads` records each
  head's output at the CLS token (or pooled over patches); with
  ``space="joint"`` it maps each head's CLS contribution through ``ln_post``
  and the final projection into the space where the text embeddings live, so
  that text embeddings of concept prompts (:func:`text_dictionary`) are a
  dictionary for :func:`hp_mini.somp`.

Example
-------
>>> import open_clip, torch, hp_mini
>>> from hp_mini.vision.clip import split_heads, head_split_error
>>> model = open_clip.create_model("ViT-B-32", pretrained=None)   # doctest: +SKIP
>>> split_heads(model)                                           # doctest: +SKIP
>>> len(hp_mini.attention_heads(model)), hp_mini.attention_heads(model)[0].n_heads  # doctest: +SKIP
(12, 12)
>>> max(head_split_error(model, torch.randn(1, 3, 224, 224))) < 1e-5   # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import json
import time
import types
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..activations import HeadActivations, HeadStore, select_layers
from ..dictionary import Dictionary
from ..heads import LayerHeads
from ..models import cache_dir, register_model, write_atomically

__all__ = [
    "HeadwiseAttention",
    "ShapesCLIPConfig",
    "ShapesCLIPProcessor",
    "WordTokenizer",
    "build_shapes_clip",
    "cache_name",
    "clip_heads",
    "concept_prompts",
    "describe",
    "head_split_error",
    "image_embeddings",
    "joint_space_map",
    "load_shapes_clip",
    "record_image_heads",
    "split_heads",
    "text_dictionary",
    "train_shapes_clip",
    "zero_shot_accuracies",
    "zero_shot_accuracy",
    "zero_shot_predict",
]


# --------------------------------------------------------------------------- #
# The exact head split
# --------------------------------------------------------------------------- #


class HeadwiseAttention(nn.Module):
    """``nn.MultiheadAttention`` with its output projection called as a module.

    Built from an existing ``nn.MultiheadAttention`` with :meth:`from_mha`; it
    shares that module's parameters (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj``), so state dicts load into either. The forward pass computes
    per-head queries, keys and values from ``in_proj_weight``, runs
    scaled-dot-product attention per head, concatenates the heads into
    ``z [..., n_heads * d_head]`` and returns ``out_proj(z)``. A forward
    pre-hook on ``out_proj`` therefore sees ``z``: head ``h`` writes
    ``x_h = W_O[:, h] z_h`` and ``sum_h x_h + out_proj.bias`` is the output.

    Supports what open_clip uses: ``batch_first`` either way, additive float
    or boolean ``attn_mask`` (``[T, S]`` or ``[B * n_heads, T, S]``),
    ``key_padding_mask``, and ``need_weights=False``. Modules with
    ``bias_k``/``bias_v``, ``add_zero_attn`` or separate key/value widths are
    refused with a clear error.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, batch_first: bool, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.batch_first = batch_first
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> HeadwiseAttention:
        """Wrap ``mha``, sharing (not copying) its parameters."""
        if not getattr(mha, "_qkv_same_embed_dim", True):
            raise NotImplementedError("HeadwiseAttention needs query, key and value of the same width")
        if mha.bias_k is not None or mha.bias_v is not None or mha.add_zero_attn:
            raise NotImplementedError("HeadwiseAttention does not support bias_k/bias_v or add_zero_attn")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.embed_dim, new.num_heads, new.head_dim = mha.embed_dim, mha.num_heads, mha.head_dim
        new.batch_first, new.dropout = mha.batch_first, mha.dropout
        new.in_proj_weight = mha.in_proj_weight
        if mha.in_proj_bias is None:
            new.register_parameter("in_proj_bias", None)
        else:
            new.in_proj_bias = mha.in_proj_bias
        new.out_proj = mha.out_proj
        return new

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"

    def heads_z(self, query, key=None, value=None, *, key_padding_mask=None, attn_mask=None, is_causal=False):
        """The concatenated head outputs ``z [B, T, n_heads * d_head]`` (batch first)."""
        key = query if key is None else key
        value = key if value is None else value
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, t, d = query.shape
        s = key.shape[1]
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        h, dh = self.num_heads, self.head_dim
        q = F.linear(query, w_q, b_q).reshape(b, t, h, dh).transpose(1, 2)
        k = F.linear(key, w_k, b_k).reshape(b, s, h, dh).transpose(1, 2)
        v = F.linear(value, w_v, b_v).reshape(b, s, h, dh).transpose(1, 2)
        mask = _attention_mask(attn_mask, key_padding_mask, b, h, t, s, q.dtype)
        z = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=bool(is_causal and mask is None),
        )
        return z.transpose(1, 2).reshape(b, t, d)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise NotImplementedError("HeadwiseAttention returns no attention weights; call it with need_weights=False")
        z = self.heads_z(query, key, value, key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal)
        out = self.out_proj(z)
        return (out if self.batch_first else out.transpose(0, 1)), None

    def reference(self, query, key=None, value=None, *, attn_mask=None, key_padding_mask=None) -> torch.Tensor:
        """The output of the original ``nn.MultiheadAttention`` computation (PyTorch's own code path)."""
        key = query if key is None else key
        value = key if value is None else value
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out, _ = F.multi_head_attention_forward(
            query,
            key,
            value,
            self.embed_dim,
            self.num_heads,
            self.in_proj_weight,
            self.in_proj_bias,
            None,
            None,
            False,
            0.0,
            self.out_proj.weight,
            self.out_proj.bias,
            training=False,
            key_padding_mask=key_padding_mask,
            need_weights=False,
            attn_mask=attn_mask,
        )
        return out.transpose(0, 1) if self.batch_first else out


def _attention_mask(attn_mask, key_padding_mask, b, h, t, s, dtype):
    """One additive float mask ``[B, H, T, S]`` (or ``[T, S]``) from the MHA conventions, or None."""

    def additive(m):
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(m, float("-inf"))
        return m.to(dtype)

    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask)
        if mask.ndim == 3:  # [B * H, T, S]
            mask = mask.reshape(b, h, t, s)
    if key_padding_mask is not None:
        kpm = additive(key_padding_mask).reshape(b, 1, 1, s)
        mask = kpm if mask is None else mask + kpm
    return mask


def _blocks(model: nn.Module, tower: str):
    if tower == "visual":
        transformer = getattr(getattr(model, "visual", None), "transformer", None)
    elif tower == "text":
        transformer = getattr(model, "transformer", None)
        if transformer is None and hasattr(model, "text"):
            transformer = getattr(model.text, "transformer", None)
    else:
        raise ValueError(f"tower must be 'visual' or 'text', got {tower!r}")
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        raise NotImplementedError(
            f"{type(model).__name__} has no open_clip {tower} transformer with `resblocks` "
            "(timm or Hugging Face towers are not supported); hp_mini supports open_clip ViT towers"
        )
    return blocks


def split_heads(model: nn.Module, *, towers: Sequence[str] = ("visual",)) -> nn.Module:
    """Make the heads of an open_clip model visible to hooks, in place; returns ``model``.

    Each ``ResidualAttentionBlock.attn`` (an ``nn.MultiheadAttention``) of the
    chosen towers is replaced by a :class:`HeadwiseAttention` sharing its
    parameters. Blocks of open_clip's ``CustomResidualAttentionBlock`` already
    call ``out_proj`` as a module and are left as they are. The model gets an
    ``hp_mini_heads()`` method, so ``hp_mini.attention_heads(model)`` returns
    the heads of the image encoder. Calling it twice is harmless.
    """
    for tower in towers:
        for block in _blocks(model, tower):
            if isinstance(block.attn, nn.MultiheadAttention):
                block.attn = HeadwiseAttention.from_mha(block.attn)
    if "hp_mini_heads" not in model.__dict__:
        model.hp_mini_heads = types.MethodType(lambda self: clip_heads(self), model)
    return model


def clip_heads(model: nn.Module, *, tower: str = "visual") -> list[LayerHeads]:
    """The heads of one tower of a :func:`split_heads` open_clip model, one :class:`LayerHeads` per block."""
    sites = []
    for i, block in enumerate(_blocks(model, tower)):
        attn = block.attn
        if isinstance(attn, nn.MultiheadAttention):
            raise RuntimeError(
                f"block {i} of the {tower} tower still uses nn.MultiheadAttention, whose output projection "
                "no hook can see; call hp_mini.vision.clip.split_heads(model) first"
            )
        sites.append(LayerHeads(i, attn.out_proj, attn.num_heads, attn.head_dim))
    return sites


def head_split_error(model: nn.Module, images: torch.Tensor, *, tower: str = "visual") -> list[float]:
    """Per block, the relative error of ``sum_h x_h + b_O`` against PyTorch's own attention.

    Runs ``model.encode_image(images)`` once; at every block, the attention's
    input is kept, the heads' contributions are computed from the recorded
    ``z`` with :meth:`LayerHeads.contributions`, and their sum plus the bias is
    compared with ``F.multi_head_attention_forward`` on the same input (the
    computation ``nn.MultiheadAttention`` performs). Returns
    ``max|diff| / max|reference|`` per block.
    """
    sites = clip_heads(model, tower=tower)
    blocks = _blocks(model, tower)
    seen: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    for i, (block, site) in enumerate(zip(blocks, sites)):

        def keep_input(module, args, kwargs, i=i):
            q = kwargs.get("query", args[0] if args else None)
            seen.setdefault(i, {})["x"] = q.detach()
            seen[i]["mask"] = kwargs.get("attn_mask")

        def keep_z(module, args, i=i):
            seen.setdefault(i, {})["z"] = args[0].detach()

        handles.append(block.attn.register_forward_pre_hook(keep_input, with_kwargs=True))
        handles.append(site.module.register_forward_pre_hook(keep_z))
    try:
        with torch.no_grad():
            if tower == "visual":
                model.encode_image(images)
            else:
                model.encode_text(images)
        errors = []
        with torch.no_grad():
            for i, site in enumerate(sites):
                attn = blocks[i].attn
                mask = seen[i]["mask"]
                if isinstance(attn, HeadwiseAttention):
                    ref = attn.reference(seen[i]["x"], attn_mask=mask)
                else:  # a custom open_clip block: its own forward is the reference
                    ref = attn(seen[i]["x"], attn_mask=mask)
                parts = site.contributions(seen[i]["z"])  # [..., H, d_model]
                total = parts.sum(-2) + (site.bias if site.bias is not None else 0)
                errors.append(float((total - ref).abs().max() / ref.abs().max()))
        return errors
    finally:
        for handle in handles:
            handle.remove()


# --------------------------------------------------------------------------- #
# Recording on image tokens, and the joint image-text space
# --------------------------------------------------------------------------- #

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
    sites = sites if sites is not None else clip_heads(model)
    blocks = _blocks(model, "visual")
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
        Split with :func:`split_heads` (``load_model("shapes-clip")`` is).
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
    pixels = _pixels(processor, images)
    n = pixels.shape[0]
    if texts is not None and len(texts) != n:
        raise ValueError(f"got {len(texts)} texts for {n} images")
    sites = select_layers(clip_heads(model), layers, "the image encoder")
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


def _pixels(processor, images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    images = list(images)
    if hasattr(processor, "image_transform"):
        return processor(images=images)["image"]
    return torch.stack([processor(im) for im in images])


# --------------------------------------------------------------------------- #
# Text: a word-level tokenizer, prompts, and the text dictionary
# --------------------------------------------------------------------------- #


class WordTokenizer:
    """A word-level tokenizer for open_clip's text tower.

    Ids: ``0`` padding, ``1`` start, words ``2..``, and the end token last, so
    that open_clip's ``argmax`` pooling (the end token has the largest id)
    reads the end of each text. Unknown words map to ``<unk>``.
    """

    def __init__(self, words: Sequence[str], context_length: int = 12):
        self.words = list(words)
        self.context_length = context_length
        self.vocab = ["<pad>", "<sot>", "<unk>", *self.words, "<eot>"]
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids = [self.index["<sot>"], *(self.index.get(w, 2) for w in text.lower().split()), self.index["<eot>"]]
        if len(ids) > self.context_length:
            raise ValueError(f"{text!r} has {len(ids)} tokens; the context holds {self.context_length}")
        return ids

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """``[n, context_length]`` token ids, right-padded with 0."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.encode(t)
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids) -> str:
        return " ".join(self.vocab[int(i)] for i in ids if int(i) > 2 and self.vocab[int(i)] != "<eot>")


class ShapesCLIPProcessor:
    """The image transform and the tokenizer of ``shapes-clip``, in one object.

    ``processor(images=[...], text=[...])`` returns ``{"image": [n, 3, H, W],
    "text": [m, context_length]}``, ready for ``model(**batch)``.
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self, tokenizer: WordTokenizer):
        self.tokenizer = tokenizer

    def image_transform(self, image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]

    def pixels(self, array: np.ndarray) -> torch.Tensor:
        """``uint8 [n, H, W, 3]`` -> normalised ``[n, 3, H, W]``."""
        x = torch.from_numpy(array).float().div_(255.0).permute(0, 3, 1, 2)
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]

    def __call__(self, *, images=None, text=None) -> dict[str, torch.Tensor]:
        out = {}
        if images is not None:
            out["image"] = torch.stack([self.image_transform(im) for im in images])
        if text is not None:
            out["text"] = self.tokenizer(text)
        return out


_ATTRS = ("count", "size", "colour", "shape", "position")


def describe(*, colour=None, shape=None, count=None, size=None, position=None) -> str:
    """A description in the scenes' caption language that mentions only the given attributes.

    ``describe(colour="red")`` -> ``"red shapes"``; ``describe(shape="circle")``
    -> ``"circles"``; with every attribute it is the scene's caption.
    """
    from .shapes import COUNT_WORDS

    words = []
    if count is not None:
        words.append(COUNT_WORDS[int(count)])
    if size is not None:
        words.append(size)
    if colour is not None:
        words.append(colour)
    noun = shape if shape is not None else "shape"
    words.append(noun if count is not None and int(count) == 1 else noun + "s")
    if position is not None:
        words += ["on", "the", position]
    return " ".join(words)


def concept_prompts(attribute: str) -> tuple[list[str], list[str]]:
    """``(values, prompts)`` of one attribute: one prompt per value, e.g. ``"red shapes"``."""
    from . import shapes

    values = shapes.ATTRIBUTE_VALUES
    if attribute not in values:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {sorted(values)}")
    vals = values[attribute]
    return [str(v) for v in vals], [describe(**{attribute: v}) for v in vals]


def text_dictionary(model: nn.Module, processor, prompts: Sequence[str], *, normalize: bool = True) -> Dictionary:
    """Text embeddings of ``prompts`` as a :class:`hp_mini.Dictionary` in the joint space.

    ``atoms`` is ``[len(prompts), embed_dim]`` (L2-normalised rows unless
    ``normalize=False``), ``labels`` are the prompts. Heads recorded with
    ``record_image_heads(..., space="joint")`` write vectors of the same width.
    """
    prompts = list(prompts)
    tokens = processor.tokenizer(prompts) if hasattr(processor, "tokenizer") else processor(prompts)
    with torch.no_grad():
        emb = model.encode_text(tokens.to(next(model.parameters()).device)).float().cpu()
    return Dictionary(F.normalize(emb, dim=-1) if normalize else emb, prompts)


# --------------------------------------------------------------------------- #
# Zero-shot classification
# --------------------------------------------------------------------------- #


def image_embeddings(model: nn.Module, processor, images, *, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised image embeddings ``[n, embed_dim]`` (edits of an enclosing ``scale_heads`` apply)."""
    pixels = _pixels(processor, images)
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
    value of each image; the prompts are those of :func:`concept_prompts`.
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
    """Zero-shot accuracy on one attribute, with the prompts of :func:`concept_prompts`."""
    return zero_shot_accuracies(model, processor, images, {attribute: labels}, batch_size=batch_size)[attribute]


# --------------------------------------------------------------------------- #
# The shapes-clip model: build, train, cache, load
# --------------------------------------------------------------------------- #

_CACHE_PREFIX = "shapes-clip"


@dataclass(frozen=True)
class ShapesCLIPConfig:
    """Architecture and training recipe of ``shapes-clip`` (part of the cache key)."""

    embed_dim: int = 64
    vision_layers: int = 4
    vision_width: int = 96
    head_width: int = 12
    patch_size: int = 8
    text_layers: int = 2
    text_width: int = 64
    text_heads: int = 4
    mlp_ratio: float = 2.0
    context_length: int = 12
    n_train: int = 6000
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.05
    p_full_caption: float = 0.3
    seed: int = 0


def build_shapes_clip(config: ShapesCLIPConfig = ShapesCLIPConfig(), *, split: bool = True):
    """An untrained ``shapes-clip``: ``(open_clip.CLIP, ShapesCLIPProcessor)``.

    With ``split=True`` (default) the image encoder's heads are already split
    (:func:`split_heads`); ``split=False`` gives open_clip's model as it comes.
    """
    import open_clip

    from .shapes import IMAGE_SIZE, vocabulary

    tokenizer = WordTokenizer(vocabulary(), config.context_length)
    vision = open_clip.CLIPVisionCfg(
        layers=config.vision_layers,
        width=config.vision_width,
        head_width=config.head_width,
        mlp_ratio=config.mlp_ratio,
        patch_size=config.patch_size,
        image_size=IMAGE_SIZE,
    )
    text = open_clip.CLIPTextCfg(
        context_length=config.context_length,
        vocab_size=tokenizer.vocab_size,
        width=config.text_width,
        heads=config.text_heads,
        layers=config.text_layers,
        mlp_ratio=config.mlp_ratio,
    )
    torch.manual_seed(config.seed)
    model = open_clip.CLIP(config.embed_dim, vision, text)
    if split:
        split_heads(model)
    return model, ShapesCLIPProcessor(tokenizer)


def _partial_captions(attrs: np.ndarray, rng: np.random.Generator, p_full: float) -> tuple[list[str], np.ndarray]:
    """A random description per scene: each attribute kept with probability 1/2 (at least one)."""
    from . import shapes

    n = attrs.shape[0]
    keep = rng.random((n, len(_ATTRS))) < 0.5
    keep[rng.random(n) < p_full] = True
    empty = ~keep.any(1)
    keep[empty, rng.integers(len(_ATTRS), size=int(empty.sum()))] = True
    values = shapes.ATTRIBUTE_VALUES
    texts = []
    for i in range(n):
        kw = {a: values[a][attrs[i, j]] for j, a in enumerate(_ATTRS) if keep[i, j]}
        texts.append(describe(**kw))
    return texts, keep


def _attribute_codes(rows) -> np.ndarray:
    from . import shapes

    values = shapes.ATTRIBUTE_VALUES
    return np.array([[values[a].index(r[a]) for a in _ATTRS] for r in rows], dtype=np.int64)


def train_shapes_clip(config: ShapesCLIPConfig = ShapesCLIPConfig(), *, progress: bool = True):
    """Train ``shapes-clip`` from scratch; returns ``(model, processor, seconds)``.

    Contrastive training on ``config.n_train`` scenes of seed 0. Each step
    pairs every image with a random partial description of it ("red shapes",
    "three small circles", or the full caption). Because a description such as
    "red shapes" fits many images in a batch, the targets of the contrastive
    loss are all matching pairs (uniform over them), not only the diagonal.
    """
    from .shapes import scene_pixels, scenes, render_scene

    t0 = time.perf_counter()
    model, processor = build_shapes_clip(config)
    items = scenes(config.n_train, seed=config.seed)
    pixels = processor.pixels(scene_pixels([render_scene(s) for s in items]))
    codes = _attribute_codes([s.attributes() for s in items])
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    decay = [p for n_, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n_]
    other = [p for n_, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n_)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": other, "weight_decay": 0.0}], lr=config.lr
    )

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        t = (step - config.warmup) / max(1, config.steps - config.warmup)
        return config.lr * 0.5 * (1 + np.cos(np.pi * t))

    model.train()
    bar = range(config.steps)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="training shapes-clip", leave=False)
    for step in bar:
        idx = torch.randint(0, config.n_train, (config.batch_size,), generator=gen)
        a = codes[idx.numpy()]
        texts, keep = _partial_captions(a, rng, config.p_full_caption)
        # image i matches text j when every attribute text j mentions agrees with image i
        agree = (a[:, None, :] == a[None, :, :]) | ~keep[None, :, :]
        match = torch.from_numpy(agree.all(-1)).float()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        img = F.normalize(model.encode_image(pixels[idx]), dim=-1)
        txt = F.normalize(model.encode_text(processor.tokenizer(texts)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        loss_i = -(match / match.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
        loss_t = -(match / match.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")  # type: ignore[union-attr]
    model.eval()
    return model, processor, time.perf_counter() - t0


def cache_name(config: ShapesCLIPConfig = ShapesCLIPConfig()) -> str:
    """The cache folder of a recipe: ``shapes-clip-<hash of the recipe and open_clip's version>``."""
    import hashlib

    import open_clip

    key = json.dumps({"recipe": asdict(config), "open_clip": open_clip.__version__}, sort_keys=True)
    return f"{_CACHE_PREFIX}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def load_shapes_clip(*, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", progress: bool = True):
    """``(model, processor)`` of ``shapes-clip``: trained on the first call, then read from the cache."""
    from safetensors.torch import load_file, save_file

    config = ShapesCLIPConfig()
    final = cache_dir() / cache_name(config)
    if not (final / "model.safetensors").is_file():
        if progress:
            print(f"hp_mini: training shapes-clip (once; cached in {final})...", flush=True)

        def fill(tmp: Path) -> None:
            model, processor, seconds = train_shapes_clip(config, progress=progress)
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"))
            meta = {"config": asdict(config), "vocab": processor.tokenizer.words, "train_seconds": seconds}
            (tmp / "config.json").write_text(json.dumps(meta, indent=1))

        write_atomically(final, fill)
    meta = json.loads((final / "config.json").read_text())
    model, processor = build_shapes_clip(ShapesCLIPConfig(**meta["config"]))
    model.load_state_dict(load_file(str(final / "model.safetensors")), strict=True)
    model.train_seconds = meta.get("train_seconds")
    return model.to(device=device, dtype=dtype).eval(), processor


def _loader(dtype=torch.float32, device="cpu"):
    return load_shapes_clip(dtype=dtype, device=device)


register_model("shapes-clip", _loader)
