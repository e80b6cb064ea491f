"""Turn prompts (and images) into a padded batch for a model.

One place decides how text and vision-language models are fed, so recording,
editing and generation all see the same inputs.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from hp_mini.model.architectures import model_parts

__all__ = ["encode", "model_device"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def tokenizer_of(tokenizer_or_processor):
    return getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)


def ensure_pad_token(tokenizer_or_processor) -> None:
    """Give a tokenizer without a padding token its end-of-sequence token as one."""
    tok = tokenizer_of(tokenizer_or_processor)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(
                f"{type(tok).__name__} has neither a padding nor an end-of-sequence token; "
                "set tokenizer.pad_token before batching prompts"
            )
        tok.pad_token = tok.eos_token


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _needs_token_type_ids(model: nn.Module) -> bool:
    """Whether the architecture declaration asks for ``token_type_ids`` with images (Gemma 3)."""
    try:
        return model_parts(model).needs_token_type_ids
    except NotImplementedError:
        return False


def encode(
    model: nn.Module,
    tokenizer_or_processor,
    texts: Sequence[str],
    *,
    images=None,
    device: torch.device | str | None = None,
    padding_side: str | None = None,
) -> dict[str, torch.Tensor]:
    """A padded batch ready for ``model(**batch)``.

    Text prompts get explicit ``position_ids`` counted over real tokens, so that
    a prompt gives the same result with left padding, right padding or alone
    (models with absolute positions, such as GPT-2, need this).

    Returns
    -------
    dict with ``input_ids`` ``[B, T]``, ``attention_mask`` ``[B, T]`` and, for
    text models, ``position_ids`` ``[B, T]``; for vision-language models the
    processor's image tensors too.
    """
    device = device if device is not None else model_device(model)
    ensure_pad_token(tokenizer_or_processor)
    tok = tokenizer_of(tokenizer_or_processor)
    old_side = tok.padding_side
    if padding_side is not None:
        tok.padding_side = padding_side
    try:
        if images is not None:
            batch = tokenizer_or_processor(text=list(texts), images=list(images), return_tensors="pt", padding=True)
        else:
            batch = tok(list(texts), return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old_side
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if images is None or not _needs_token_type_ids(model):
        batch.pop("token_type_ids", None)
    if images is None and _accepts(model, "position_ids"):
        mask = batch["attention_mask"].long()
        batch["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
    return batch
