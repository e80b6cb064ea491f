"""Input adapter for the recorder core: text prompts, and a vision-language model's image tokens.

:class:`PromptInputs` turns prompts (with one image each for a
vision-language model) into padded batches (:func:`hp_mini.model.inputs.encode`)
and says which positions a pooling mode selects (:func:`pool_mask`): every real
token (``"mean"``), the last one (``"last"``), the image tokens
(``"image"``), one boolean mask per prompt, or a function of the padded batch.
With ``pool=None`` every real token is kept as a row of its own.

Example
-------
>>> import torch
>>> batch = {"input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]),
...          "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}
>>> pool_mask("last", batch).int()
tensor([[0, 0, 1],
        [0, 0, 1]], dtype=torch.int32)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Literal, Union

import torch
from torch import nn

from hp_mini.model.architectures import ModelParts, model_parts
from hp_mini.model.heads import attention_heads, check_heads_of
from hp_mini.model.inputs import encode, model_device
from hp_mini.model.sites import LayerHeads
from hp_mini.record.core import Forward, choose_sites

__all__ = ["Pool", "PromptInputs", "check_batch", "check_pool", "pool_mask", "prompt_sites"]

Pool = Union[
    Literal["mean", "last", "image"],
    Sequence[torch.Tensor],
    Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    None,
]
"""A pooling mode: ``"mean"``, ``"last"``, ``"image"``, one boolean mask per
prompt over that prompt's own tokens (unpadded), a function of the padded batch
``(input_ids, attention_mask) -> [B, T]`` bool, or None (every token kept)."""


def check_pool(pool: Pool, n: int) -> list[torch.Tensor] | None:
    """Check ``pool`` for ``n`` prompts; the list of per-prompt masks when it is one, else None.

    Raises
    ------
    ValueError
        An unknown pooling name, or a number of masks other than ``n``.
    """
    if pool is None or callable(pool):
        return None
    if isinstance(pool, str):
        if pool not in ("mean", "last", "image"):
            raise ValueError(
                f"pool must be 'mean', 'last', 'image', a list of masks, a callable or None, got {pool!r}"
            )
        return None
    masks = list(pool)
    if len(masks) != n:
        raise ValueError(f"got {len(masks)} pool masks for {n} prompts")
    return masks


def pool_mask(
    pool: Pool,
    batch: dict[str, torch.Tensor],
    prompt_masks: Sequence[torch.Tensor] | None = None,
    image_token_id: int | None = None,
    first: int = 0,
) -> torch.Tensor:
    """The positions of a padded batch that ``pool`` selects, ``[B, T]`` bool (padding never).

    Parameters
    ----------
    pool : Pool
        Not None.
    batch : dict
        ``input_ids`` and ``attention_mask``, ``[B, T]``.
    prompt_masks : sequence of Tensor, optional
        The batch's masks when ``pool`` is a list of masks.
    image_token_id : int, optional
        For ``pool="image"``.
    first : int
        Index of the batch's first prompt, for the messages.

    Raises
    ------
    ValueError
        A mask of the wrong length, a function returning the wrong shape, no
        image token, or a prompt none of whose tokens is selected.
    """
    attn = batch["attention_mask"].bool()
    if isinstance(pool, str) and pool == "mean":
        mask = attn
    elif isinstance(pool, str) and pool == "last":  # the last real token, for left and right padding alike
        last = (attn * torch.arange(1, attn.shape[1] + 1, device=attn.device)).argmax(1)
        mask = torch.zeros_like(attn)
        mask[torch.arange(attn.shape[0]), last] = True
    elif isinstance(pool, str) and pool == "image":
        if image_token_id is None:
            raise ValueError("pool='image' needs a model with an image token (a vision-language model)")
        mask = (batch["input_ids"] == image_token_id) & attn
    elif callable(pool):
        mask = pool(batch["input_ids"], batch["attention_mask"]).bool()
        if mask.shape != attn.shape:
            raise ValueError(f"the pooling function returned {tuple(mask.shape)}, expected {tuple(attn.shape)}")
        mask = mask & attn
    else:
        mask = _place_masks(attn, prompt_masks or [])
    empty = mask.sum(1) == 0
    if empty.any():
        bad = [first + int(i) for i in empty.nonzero().flatten()]
        raise ValueError(
            f"pool={pool!r} selects no token of prompt(s) {bad}" if isinstance(pool, str) else
            f"the pool argument selects no token of prompt(s) {bad}; select at least one token of every prompt"
        )
    return mask


def _place_masks(attn: torch.Tensor, prompt_masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """One mask per prompt over its own tokens, placed on the real positions of the padded batch."""
    mask = torch.zeros_like(attn)
    for b, m in enumerate(prompt_masks):
        real = attn[b].nonzero().flatten()
        m = torch.as_tensor(m, dtype=torch.bool, device=attn.device).flatten()
        if m.numel() != real.numel():
            raise ValueError(
                f"pool mask {b} has {m.numel()} entries but the prompt has {real.numel()} tokens; "
                "give one boolean per token of the prompt as the tokenizer splits it"
            )
        mask[b, real[m]] = True
    return mask


def check_batch(model: nn.Module, batch: dict[str, torch.Tensor], first: int = 0) -> None:
    """Refuse token ids the model cannot embed, and say when prompts outrun the model's context.

    Raises
    ------
    ValueError
        Token ids beyond the embedding (a tokenizer of another model), or a
        prompt longer than a model with learned absolute positions allows; a
        prompt longer than a rotary model's context only warns
        (``RuntimeWarning``).
    """
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and ids.numel() and int(ids.max()) >= rows:
        row = int((ids >= rows).any(1).nonzero()[0])
        raise ValueError(
            f"prompt {first + row} has token id {int(ids.max())}, but the model embeds only {rows} tokens: "
            "the tokenizer does not belong to this model; load both with hp_mini.load_model"
        )
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    absolute = getattr(config, "n_positions", None)  # learned absolute positions (GPT-2)
    limit = absolute or getattr(config, "max_position_embeddings", None)
    lengths = mask.sum(1)
    if isinstance(limit, int) and int(lengths.max()) > limit:
        row = int(lengths.argmax())
        message = (
            f"prompt {first + row} has {int(lengths.max())} tokens, more than the {limit} positions "
            f"{type(model).__name__} was trained on; shorten or split it"
        )
        if absolute:
            raise ValueError(message)
        warnings.warn(message + " (results beyond the context are unreliable)", RuntimeWarning, stacklevel=4)


def _parts_or_none(model: nn.Module) -> ModelParts | None:
    try:
        return model_parts(model)
    except NotImplementedError:
        return None


def prompt_sites(model: nn.Module, sites: list[LayerHeads] | None, layers: Sequence[int] | None) -> list[LayerHeads]:
    """The sites to record: ``sites`` (checked to belong to ``model``) or all of its heads, for ``layers``."""
    found = check_heads_of(model, sites) if sites is not None else attention_heads(model)
    return choose_sites(found, layers)


class PromptInputs:
    """Input adapter for the recorder core: prompts, each with an image for a vision-language model.

    Parameters
    ----------
    model : nn.Module
    tokenizer : tokenizer or processor
        The processor when ``images`` are given.
    prompts : list of str
        Already checked (:func:`hp_mini.checks.check_prompts`).
    images : list, optional
        One image per prompt.
    pool : Pool
        Which positions each batch's :class:`~hp_mini.record.core.Forward` selects.
    index : callable ``(i) -> int``, optional
        The index among all the prompts of ``prompts[i]`` (for messages and
        positions; default ``i``). Prompts of one batch must be consecutive.

    Raises
    ------
    ValueError
        A number of images or masks other than the number of prompts, an
        unknown ``pool``, or images given to a text model.
    """

    def __init__(self, model: nn.Module, tokenizer, prompts: Sequence[str], *, images=None, pool: Pool = "mean",
                 index: Callable[[int], int] | None = None):
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; give one image per prompt")
        self.masks = check_pool(pool, len(prompts))
        parts = _parts_or_none(model)
        if images is not None and parts is not None and parts.wrapper is None:
            raise ValueError(
                f"images were given but {type(model).__name__} is a text model, which would ignore them; "
                "pass images only to a vision-language model"
            )
        self.model, self.tokenizer, self.prompts, self.images = model, tokenizer, list(prompts), images
        self.pool, self.index = pool, index or (lambda i: i)
        self.image_token_id = parts.image_token_id if parts is not None else None
        self.device = model_device(model)

    def __len__(self) -> int:
        return len(self.prompts)

    def forward(self, start: int, stop: int) -> Forward:
        """The padded batch of prompts ``start:stop``, checked, with its positions to pool."""
        images = self.images[start:stop] if self.images is not None else None
        batch = encode(self.model, self.tokenizer, self.prompts[start:stop], images=images, device=self.device)
        first = self.index(start)
        check_batch(self.model, batch, first)
        select = None
        if self.pool is not None:
            masks = self.masks[start:stop] if self.masks is not None else None
            select = pool_mask(self.pool, batch, masks, self.image_token_id, first)
        model = self.model
        return Forward(run=lambda: model(**batch, use_cache=False), select=select,
                       real=batch["attention_mask"].bool(), first=first)
