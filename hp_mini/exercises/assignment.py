"""The list of every exercise in the book, for ``book/assignment.md``.

The book's Sphinx extension (``book/_ext/hp_book.py``) fills the section between the
``% BEGIN exercises`` and ``% END exercises`` lines of ``book/assignment.md`` at build time,
from the chapters listed in ``_toc.yml``, so the page always lists every exercise.
``python -m hp_mini.exercises assignment`` prints the same list.
"""

from __future__ import annotations

import re
from pathlib import Path

from hp_mini.exercises.notebooks import Exercise, find_exercises

__all__ = ["BEGIN", "END", "book_exercises", "fill_assignment", "render_exercise_list", "toc_files"]

BEGIN = "% BEGIN exercises"
END = "% END exercises"


def toc_files(root: Path) -> list[Path]:
    """The book's pages in table-of-contents order (sources that exist)."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    names: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    names.append(node[key])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(toc)
    files = []
    for name in names:
        for suffix in (".md", ".ipynb"):
            p = root / f"{name}{suffix}"
            if p.exists():
                files.append(p)
                break
    return files


def book_exercises(root: str | Path = ".") -> list[Exercise]:
    """Every exercise of the book, chapter by chapter, in reading order."""
    root = Path(root)
    out: list[Exercise] = []
    for path in toc_files(root):
        if path.name == "assignment.md":
            continue
        out.extend(find_exercises(path))
    return out


def _minutes(time: str) -> int | None:
    m = re.search(r"(\d+)\s*(?:[-–]\s*(\d+)\s*)?min", time)
    if not m:
        return None
    return int(m.group(2) or m.group(1))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _plain(text: str) -> str:
    return text.replace("`", "").replace("<", "‹").replace(">", "›").replace("|", "/").strip()


def render_exercise_list(exercises: list[Exercise]) -> str:
    """MyST Markdown: one table per chapter with a cross-reference to each exercise."""
    if not exercises:
        return "No chapter has exercises yet.\n"
    chapters: dict[str, list[Exercise]] = {}
    for ex in exercises:
        chapters.setdefault(ex.chapter, []).append(ex)
    total = [m for ex in exercises if (m := _minutes(ex.time)) is not None]
    n_inv = sum(ex.investigation for ex in exercises)
    lines = [
        f"The book has {_count(len(exercises), 'exercise')} in {_count(len(chapters), 'chapter')}"
        + (f", about {sum(total)} minutes of work in all" if len(total) == len(exercises) else "")
        + f"; {_count(n_inv, 'investigation')}, marked below.",
        "",
    ]
    for chapter, items in chapters.items():
        first = items[0]
        heading = f"{{ref}}`{_plain(first.chapter_title)} <{first.chapter_label}>`" if first.chapter_label else _plain(first.chapter_title)
        lines += [f"**{heading}** (`{chapter}`)", ""]
        lines += ["| Exercise | Kind | Difficulty | Time | Checker |", "| --- | --- | --- | --- | --- |"]
        for ex in items:
            checks = ", ".join(f"`{c}`" for c in ex.checks) or "none"
            kind = "**investigation**" if ex.investigation else "function"
            lines.append(
                f"| {{ref}}`{_plain(ex.title)} <{ex.label}>` | {kind} | {_plain(ex.difficulty) or '?'} "
                f"| {_plain(ex.time) or '?'} | {checks} |"
            )
        lines.append("")
    return "\n".join(lines)


def fill_assignment(text: str, root: str | Path = ".") -> str:
    """``text`` (the assignment page) with the list of every exercise between its markers."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"the assignment page lacks the lines {BEGIN!r} ... and {END!r}")
    head, rest = text.split(BEGIN, 1)
    marker, rest = rest.split("\n", 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}{marker}\n\n{render_exercise_list(book_exercises(root))}\n{END}{tail}"
