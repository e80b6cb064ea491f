"""A tiny exercise used to show and test the checking machinery."""

from __future__ import annotations

from hp_mini.exercises import checker


@checker("demo.add")
def _check_add(add) -> None:
    for a, b in [(1, 2), (-3, 3), (0.5, 0.25)]:
        got = add(a, b)
        assert got == a + b, f"add({a}, {b}) returned {got!r}; expected {a + b!r}"
