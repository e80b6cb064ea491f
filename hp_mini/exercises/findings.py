"""The "What we found" box that ends each chapter of the book.

Every line of the box is built from numbers the chapter computed, so the box
changes when the results change. Each finding says whether the paper's
result was reproduced on the chapter's model, with the numbers behind it.

Example
-------
>>> from hp_mini.exercises.findings import Finding, what_we_found
>>> box = what_we_found([
...     Finding("Inverting the SOMP heads removes country answers", True,
...             "country F1 0.04 vs other F1 0.53"),
...     Finding("Enhancing them strengthens countries", False, "country F1 0.17"),
... ])
>>> print(box)
What we found
- [reproduced] Inverting the SOMP heads removes country answers: country F1 0.04 vs other F1 0.53
- [not reproduced] Enhancing them strengthens countries: country F1 0.17
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Finding", "FindingsBox", "what_we_found"]

_STATUS = {True: "reproduced", False: "not reproduced", None: "observed"}


@dataclass(frozen=True)
class Finding:
    """One result of a chapter.

    Parameters
    ----------
    claim : str
        What was tested, in words (e.g. "SOMP heads remove more accuracy than random heads").
    reproduced : bool or None
        ``True``/``False``: whether the paper's result held here; ``None`` for an
        observation that the paper does not make (shown as "observed").
    numbers : str
        The numbers behind it, formatted by the chapter from its own outputs.
    """

    claim: str
    reproduced: bool | None
    numbers: str = ""

    def __post_init__(self):
        if not isinstance(self.claim, str) or not self.claim.strip():
            raise ValueError("a finding needs a claim: a non-empty string")
        if self.reproduced not in _STATUS:
            raise ValueError(f"reproduced must be True, False or None, got {self.reproduced!r}")
        if not isinstance(self.numbers, str):
            raise TypeError(f"numbers must be a string (format them in the chapter), got {type(self.numbers).__name__}")

    @property
    def status(self) -> str:
        return _STATUS[self.reproduced]


class FindingsBox:
    """A list of findings that shows as a box in a notebook and as text elsewhere."""

    def __init__(self, findings: Sequence[Finding], title: str = "What we found"):
        self.findings = list(findings)
        self.title = title

    def __str__(self) -> str:
        lines = [self.title]
        for f in self.findings:
            lines.append(f"- [{f.status}] {f.claim}" + (f": {f.numbers}" if f.numbers else ""))
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        items = "".join(
            f'<li><span class="hp-found-status hp-found-{f.status.replace(" ", "-")}">{html.escape(f.status)}</span> '
            f"{html.escape(f.claim)}" + (f": {html.escape(f.numbers)}" if f.numbers else "") + "</li>"
            for f in self.findings
        )
        return (
            '<div class="admonition hp-found">'
            f'<p class="admonition-title">{html.escape(self.title)}</p><ul>{items}</ul></div>'
        )


def what_we_found(findings: Sequence[Finding], *, title: str = "What we found") -> FindingsBox:
    """The box that ends a chapter, built from :class:`Finding` objects.

    Parameters
    ----------
    findings : list of Finding
        At least one; each built from the chapter's own computed numbers.
    title : str
        The box's title.

    Returns
    -------
    FindingsBox
        Displays as an admonition in a notebook or book page (``_repr_html_``) and
        as a plain list with ``print``.
    """
    findings = list(findings)
    if not findings:
        raise ValueError("give at least one Finding")
    bad = [type(f).__name__ for f in findings if not isinstance(f, Finding)]
    if bad:
        raise TypeError(f"every item must be a Finding, got {', '.join(sorted(set(bad)))}")
    return FindingsBox(findings, title=title)
