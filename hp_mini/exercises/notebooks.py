"""Read the book's exercises out of chapter notebooks, and make student notebooks.

A chapter (MyST Markdown, or an ``.ipynb`` made from one) marks each exercise with an
``{exercise}`` (or ``{exercise-start}``) directive carrying ``:label: ex-...`` and a
"**Difficulty:** ... · **Time:** ..." line, follows it with a code cell that calls
``check("<topic>.<short>", answer)``, and hides the solution between
``{solution-start}`` and ``{solution-end}``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

__all__ = [
    "Exercise",
    "chapter_label",
    "exercise_cells",
    "exercises_in",
    "find_exercises",
    "read_notebook",
    "student_notebook",
    "strip_solutions",
]

_FENCE = r"(?P<fence>`{3,}|:{3,})"
_EXERCISE = re.compile(rf"^\s*{_FENCE}\{{(?P<kind>exercise|exercise-start)\}}\s*(?P<title>.*?)\s*$")
_SOLUTION_START = re.compile(rf"^\s*{_FENCE}\{{solution-start\}}")
_SOLUTION_END = re.compile(rf"^\s*{_FENCE}\{{solution-end\}}")
_LABEL = re.compile(r"^\s*:label:\s*(\S+)\s*$")
_DIFFICULTY = re.compile(
    r"\*\*Difficulty:\*\*\s*(?P<difficulty>.+?)\s*(?:·|\|)\s*\*\*Time:\*\*\s*(?P<time>[^·|\n]+?)"
    r"(?:\s*(?:·|\|)\s*\*\*(?P<investigation>Investigation)\*\*)?\s*$",
    re.M,
)
_CHECK = re.compile(r"""\bcheck\(\s*(?P<q>["'])(?P<name>[\w.\-]+)(?P=q)""")
_CHAPTER_LABEL = re.compile(r"^\((?P<label>[\w\-:.]+)\)=\s*$", re.M)
_TITLE = re.compile(r"^#\s+(?P<title>.+?)\s*$", re.M)

SKIP_TAG = "skip-execution"


@dataclass
class Exercise:
    """One exercise of a chapter."""

    label: str  #: the cross-reference label, ``ex-<chapter>-<short>``
    title: str
    difficulty: str = ""  #: e.g. "★☆☆ easy"
    time: str = ""  #: e.g. "about 5 minutes"
    checks: list[str] = field(default_factory=list)  #: checker names called in the learner's cell(s)
    investigation: bool = False  #: tagged "· **Investigation**": a question about a model, checked
    chapter: str = ""  #: the chapter's file stem
    chapter_label: str = ""
    chapter_title: str = ""


def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    """Read a chapter: MyST Markdown (via jupytext) or ``.ipynb``."""
    path = Path(path)
    if path.suffix == ".ipynb":
        return nbformat.read(path, as_version=4)
    import jupytext

    return jupytext.read(path)


def _solution_spans(cells) -> list[tuple[int, list[str] | None]]:
    """Walk cells; return, per cell, the markdown lines kept (None: drop the whole cell)."""
    out = []
    inside = False
    closing: str | None = None  # the fence that closes a {solution-end} directive
    for cell in cells:
        if cell.cell_type != "markdown":
            out.append(None if (inside or closing) else [])
            continue
        kept = []
        for line in cell.source.split("\n"):
            if closing is not None:
                if line.strip() == closing:
                    closing = None
                continue
            m_end = _SOLUTION_END.match(line)
            if m_end:
                inside = False
                closing = m_end.group("fence")
                continue
            if _SOLUTION_START.match(line):
                inside = True
                continue
            if not inside:
                kept.append(line)
        out.append(kept)
    if inside:
        raise ValueError("a {solution-start} has no matching {solution-end}")
    return out


def strip_solutions(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` without the solutions (everything from solution-start to solution-end).

    Learner cells (those that call ``check(...)``) lose their ``skip-execution`` tag, so they
    run in a student's notebook and when it is graded.
    """
    nb = copy.deepcopy(nb)
    cells = []
    for cell, kept in zip(nb.cells, _solution_spans(nb.cells)):
        if kept is None:
            continue
        if cell.cell_type == "markdown":
            text = "\n".join(kept).strip("\n")
            if not text.strip():
                continue
            cell.source = text
        elif cell.cell_type == "code" and _CHECK.search(cell.source):
            tags = [t for t in cell.get("metadata", {}).get("tags", []) if t != SKIP_TAG]
            if tags:
                cell.metadata["tags"] = tags
            else:
                cell.metadata.pop("tags", None)
        cells.append(cell)
    nb.cells = cells
    return nb


def student_notebook(path: str | Path) -> nbformat.NotebookNode:
    """The student version of a chapter: solutions removed, outputs cleared, ready to hand out.

    Example
    -------
    >>> nb = student_notebook("book/03_pursuing_heads.md")  # doctest: +SKIP
    >>> nbformat.write(nb, "03_pursuing_heads.ipynb")  # doctest: +SKIP
    """
    nb = strip_solutions(read_notebook(path))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("jupytext", None)
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    nb.metadata["hp_mini"] = {"chapter": Path(path).stem}  # the grader finds the chapter by it
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, cell in enumerate(nb.cells):
        cell.setdefault("id", f"cell-{i}")
    return nb


def chapter_label(nb: nbformat.NotebookNode) -> str:
    """The chapter's cross-reference label (the ``(label)=`` line before its title), or ``""``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and (m := _CHAPTER_LABEL.search(cell.source)):
            return m.group("label")
    return ""


def exercise_cells(nb: nbformat.NotebookNode) -> list[tuple[int, str | None]]:
    """For each cell index, the label of the exercise it belongs to (None before the first)."""
    current = None
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for line_no, line in enumerate(cell.source.split("\n")):
                if _EXERCISE.match(line):
                    current = _label_after(cell.source.split("\n"), line_no) or f"exercise-{i}"
        out.append((i, current))
    return out


def _label_after(lines: list[str], start: int) -> str | None:
    for line in lines[start + 1 : start + 6]:
        m = _LABEL.match(line)
        if m:
            return m.group(1)
    return None


def find_exercises(path: str | Path) -> list[Exercise]:
    """The exercises of one chapter, in order, with their difficulty, time and checker names."""
    path = Path(path)
    return exercises_in(read_notebook(path), chapter=path.stem, source=str(path))


def exercises_in(nb: nbformat.NotebookNode, *, chapter: str = "", source: str = "notebook") -> list[Exercise]:
    """The exercises of a notebook already read (see :func:`find_exercises`)."""
    path = Path(source)
    text = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    label_of_chapter = chapter_label(nb)
    chapter_title = (m.group("title") if (m := _TITLE.search(text)) else path.stem)
    exercises: list[Exercise] = []
    by_label: dict[str, Exercise] = {}
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = cell.source.split("\n")
            for i, line in enumerate(lines):
                m = _EXERCISE.match(line)
                if not m:
                    continue
                label = _label_after(lines, i)
                if label is None:
                    raise ValueError(f"{path}: exercise {m.group('title')!r} has no :label:")
                if label in by_label:
                    raise ValueError(f"{path}: two exercises are labelled {label!r}")
                body = "\n".join(lines[i + 1 : i + 40])
                d = _DIFFICULTY.search(body)
                ex = Exercise(
                    label=label,
                    title=m.group("title"),
                    difficulty=d.group("difficulty") if d else "",
                    time=d.group("time") if d else "",
                    investigation=bool(d and d.group("investigation")),
                    chapter=chapter,
                    chapter_label=label_of_chapter,
                    chapter_title=chapter_title,
                )
                exercises.append(ex)
                by_label[label] = ex
        elif cell.cell_type == "code" and exercises:
            for m in _CHECK.finditer(cell.source):
                if m.group("name") not in exercises[-1].checks:
                    exercises[-1].checks.append(m.group("name"))
    return exercises
