"""Deterministic, varied prompts for the benchmarks, built from the concept word lists."""

from __future__ import annotations

import hp_mini

TEMPLATES = [
    "The capital of {c} in {m}",
    "{n} {k} {a}s from {c}",
    "A {p} {a} on {w}",
    "In {m}, {c} sent {n} {a}s",
    "My {k} {a} is {p}",
    "{w} in {c}: {k} skies",
    "The {p} flag is {k}",
    "{n} {a}s left on {w}",
]
KEYS = [("c", "countries"), ("a", "animals"), ("m", "months"), ("k", "colours"),
        ("n", "numbers"), ("w", "weekdays"), ("p", "nationalities")]


def prompts(n: int, *, start: int = 0) -> list[str]:
    """Prompts ``start .. start + n - 1`` of an endless deterministic sequence."""
    words = {key: hp_mini.concept_words(name) for key, name in KEYS}
    out = []
    for i in range(start, start + n):
        fill = {key: ws[(i * (3 + 2 * j) + i // len(TEMPLATES)) % len(ws)] for j, (key, ws) in enumerate(words.items())}
        out.append(TEMPLATES[i % len(TEMPLATES)].format(**fill))
    return out
