"""Checkers for the page "Scaling up"."""

from __future__ import annotations

import math
import numbers

from hp_mini.exercises import checker

_GIB = 2**30
# Mistral-7B's shape, from its published configuration: layers, heads, d_head, parameters.
_MISTRAL_7B = (32, 32, 128, 7.24e9)


def _most_prompts(gpu_bytes: float, layers: int, heads: int, d_head: int, params: float,
                  weight_bytes: int = 2, output_bytes: int = 4) -> int:
    """The most prompts whose L1 outputs fit on one GPU next to the weights."""
    per_prompt = output_bytes * layers * heads * d_head
    return math.floor((gpu_bytes - weight_bytes * params) / per_prompt)


@checker("scaling.l1_prompts_on_one_gpu")
def _check_l1_prompts_on_one_gpu(n_prompts) -> None:
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, (numbers.Integral, float)):
        raise AssertionError(f"answer with a number of prompts (an integer), got {type(n_prompts).__name__}")
    if isinstance(n_prompts, float) and not n_prompts.is_integer():
        raise AssertionError(f"a number of prompts is a whole number, got {n_prompts}: round down")
    n = int(n_prompts)
    expected = _most_prompts(80 * _GIB, *_MISTRAL_7B)
    slips = {
        _most_prompts(80 * _GIB, *_MISTRAL_7B[:3], 0.0):
            "the outputs alone would fit that many, but the bfloat16 weights share the GPU: subtract them first",
        _most_prompts(80e9, *_MISTRAL_7B):
            "that takes 80 GB; the GPU holds 80 GiB, and a GiB is 2**30 bytes",
        _most_prompts(80 * _GIB, *_MISTRAL_7B, output_bytes=2):
            "the pooled outputs are kept in float32: 4 bytes each",
        _most_prompts(80 * _GIB, *_MISTRAL_7B, weight_bytes=4):
            "the weights are loaded in bfloat16: 2 bytes per parameter",
    }
    for wrong, why in slips.items():
        if abs(n - wrong) <= 1 and abs(n - expected) > 1:
            raise AssertionError(f"{n} prompts: {why}")
    if n > expected + 1:
        raise AssertionError(f"{n} prompts do not fit: weights and outputs would pass 80 GiB")
    assert n >= expected - 1, (
        f"{n} prompts fit, but more do: find the largest n with weights + L1 outputs <= 80 GiB"
    )
