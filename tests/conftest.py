"""Shared fixtures: the embedded SmolLM2 and its recorded heads (helpers live in ``helpers.py``)."""

from __future__ import annotations

import pytest

import hp_mini
from helpers import concept_prompts


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct and its tokenizer (loaded once per session)."""
    return hp_mini.load_model()


@pytest.fixture(scope="session")
def smollm2_heads(smollm2):
    """SmolLM2 head outputs on 32 prompts (store="samples"), recorded once per session."""
    model, tok = smollm2
    return hp_mini.record_heads(model, tok, concept_prompts(32), batch_size=16, progress=False)
