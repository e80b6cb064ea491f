"""The exact per-head split of open_clip's attention.

open_clip's ``ResidualAttentionBlock`` calls ``nn.MultiheadAttention``, which
applies its output projection inside ``F.multi_head_attention_forward``: the
concatenated heads ``z`` never pass through a module, so no hook can see them.
:func:`split_heads` replaces each block's attention by
:class:`HeadwiseAttention`, which shares the very same parameters (the state
dict is unchanged) and computes the same function, but calls ``out_proj`` as a
module on ``z = concat_h z_h``. After it, :func:`open_clip_heads` gives one
:class:`~hp_mini.model.sites.LayerHeads` per block, and
:func:`hp_mini.attention_heads`, :func:`hp_mini.scale_heads` and recording work
on the image encoder as on a language model. :func:`head_split_error` measures
the split against PyTorch's own attention.

Example
-------
>>> import open_clip, torch, hp_mini
>>> from hp_mini.model.open_clip import split_heads, head_split_error
>>> model = open_clip.create_model("ViT-B-32", pretrained=None)   # doctest: +SKIP
>>> split_heads(model)                                           # doctest: +SKIP
>>> len(hp_mini.attention_heads(model)), hp_mini.attention_heads(model)[0].n_heads  # doctest: +SKIP
(12, 12)
>>> max(head_split_error(model, torch.randn(1, 3, 224, 224))) < 1e-5   # doctest: +SKIP
True
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hp_mini.model.sites import LayerHeads

__all__ = ["HeadwiseAttention", "head_split_error", "open_clip_heads", "split_heads", "tower_blocks"]


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


def tower_blocks(model: nn.Module, tower: str = "visual") -> nn.ModuleList:
    """The residual attention blocks of one tower of an open_clip model.

    Parameters
    ----------
    model : open_clip CLIP
        A model whose towers are open_clip ``Transformer`` modules.
    tower : {"visual", "text"}
        The image encoder (``model.visual.transformer``) or the text encoder
        (``model.transformer``, or ``model.text.transformer``).

    Returns
    -------
    nn.ModuleList
        The tower's ``resblocks``, in order.

    Raises
    ------
    ValueError
        If ``tower`` is neither ``"visual"`` nor ``"text"``.
    NotImplementedError
        If the model has no open_clip transformer with ``resblocks`` there.
    """
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
        for block in tower_blocks(model, tower):
            if isinstance(block.attn, nn.MultiheadAttention):
                block.attn = HeadwiseAttention.from_mha(block.attn)
    if "hp_mini_heads" not in model.__dict__:
        model.hp_mini_heads = types.MethodType(lambda self: open_clip_heads(self), model)
    return model


def open_clip_heads(model: nn.Module, *, tower: str = "visual") -> list[LayerHeads]:
    """The heads of one tower of a :func:`split_heads` open_clip model.

    Parameters
    ----------
    model : open_clip CLIP
        A model whose attention modules of ``tower`` were split by
        :func:`split_heads` (or are open_clip's custom blocks, which call
        ``out_proj`` as a module already).
    tower : {"visual", "text"}
        Which encoder.

    Returns
    -------
    list[LayerHeads]
        One entry per block, in order: its ``out_proj`` (whose input is the
        concatenation of the heads), the number of heads, ``d_head`` and, for
        blocks with LayerScale (``ls_init_value``), its ``gamma`` as the
        multiplier, so that the heads' contributions are the residual writes.

    Raises
    ------
    RuntimeError
        If a block still uses ``nn.MultiheadAttention``; call
        :func:`split_heads` first.
    NotImplementedError
        If a block normalises the attention output before the residual add
        (``scale_attn``).
    """
    sites = []
    for i, block in enumerate(tower_blocks(model, tower)):
        attn = block.attn
        if isinstance(attn, nn.MultiheadAttention):
            raise RuntimeError(
                f"block {i} of the {tower} tower still uses nn.MultiheadAttention, whose output projection "
                "no hook can see; call hp_mini.model.open_clip.split_heads(model) first"
            )
        gain = _layer_scale(block, i, tower)
        sites.append(LayerHeads(i, attn.out_proj, attn.num_heads, attn.head_dim, multiplier=gain))
    return sites


def _layer_scale(block: nn.Module, i: int, tower: str) -> torch.Tensor | float:
    """The factor between the attention's output and the residual add: LayerScale's ``gamma``, or 1."""
    ln_attn = getattr(block, "ln_attn", None)
    if ln_attn is not None and not isinstance(ln_attn, nn.Identity):
        raise NotImplementedError(
            f"block {i} of the {tower} tower normalises the attention output (scale_attn) before the residual "
            "add; hp_mini does not split that norm into heads: build the model without scale_attn"
        )
    gamma = getattr(getattr(block, "ls_1", None), "gamma", None)
    return 1.0 if gamma is None else gamma.detach()


def head_split_error(model: nn.Module, images: torch.Tensor, *, tower: str = "visual") -> list[float]:
    """Per block, the relative error of ``sum_h x_h`` plus the bias's share against PyTorch's own attention.

    Runs ``model.encode_image(images)`` once; at every block, the attention's
    input is kept, the heads' contributions are computed from the recorded
    ``z`` with :meth:`LayerHeads.contributions`, and their sum plus the bias's
    share is compared with ``F.multi_head_attention_forward`` on the same input
    (the computation ``nn.MultiheadAttention`` performs), passed through the
    block's LayerScale when it has one. Returns ``max|diff| / max|reference|``
    per block.
    """
    sites = open_clip_heads(model, tower=tower)
    blocks = tower_blocks(model, tower)
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
                ref = getattr(blocks[i], "ls_1", nn.Identity())(ref)
                z = seen[i]["z"]
                share = site.bias_share(z)
                total = site.contributions(z).sum(-2) + (share if share is not None else 0)  # over the heads
                errors.append(float((total - ref).abs().max() / ref.abs().max()))
        return errors
    finally:
        for handle in handles:
            handle.remove()
