"""Greedy generation for text and vision-language models alike.

The chapters and widgets all generate through :func:`generate`, so an edit made
with :func:`hp_mini.scale_heads` applies the same way everywhere.

Example
-------
>>> import hp_mini
>>> model, tokenizer = hp_mini.load_model()                       # doctest: +SKIP
>>> hp_mini.generate(model, tokenizer, ["The capital of France is"], max_new_tokens=3)  # doctest: +SKIP
[' Paris. It']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .inputs import _tokenizer_of, encode

__all__ = ["generate"]


def generate(
    model: nn.Module,
    tokenizer_or_processor,
    prompts: Sequence[str] | str,
    *,
    images=None,
    max_new_tokens: int = 20,
    batch_size: int = 16,
    chat: bool = False,
    skip_special_tokens: bool = True,
) -> list[str]:
    """Greedy continuations of ``prompts`` (only the new text is returned).

    Parameters
    ----------
    model : nn.Module
        A causal LM or a vision-language model.
    tokenizer_or_processor
        Its tokenizer, or its processor when ``images`` are given.
    prompts : list of str
        One prompt per continuation.
    images : list of images, optional
        One image per prompt, for vision-language models.
    max_new_tokens : int
        Length limit of each continuation.
    batch_size : int
        Prompts per ``model.generate`` call (left-padded).
    chat : bool
        Wrap each prompt as a user turn with the tokenizer's chat template.

    Returns
    -------
    list of str, one per prompt.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if images is not None and len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; give one image per prompt")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    tok = _tokenizer_of(tokenizer_or_processor)
    if chat:
        prompts = [
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        chunk_images = images[start : start + batch_size] if images is not None else None
        batch = encode(model, tokenizer_or_processor, chunk, images=chunk_images, padding_side="left")
        batch.pop("position_ids", None)  # generate() derives them from the attention mask
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        outputs.extend(tok.batch_decode(new, skip_special_tokens=skip_special_tokens))
    return outputs
