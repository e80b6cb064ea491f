"""Checkers for the book's exercises, in the ARENA style.

Each exercise in the book has a name such as ``"heads.contribution"``; its
checker lives in the module of that chapter's topic (``hp_mini/exercises/heads.py``)
and is registered with :func:`checker`. A learner calls :func:`check` with the
name and their answer; it prints a confirmation, or raises
:class:`ExerciseError` with a message that says *what* is wrong.

Example
-------
>>> from hp_mini.exercises import check
>>> def add(a, b):
...     return a + b
>>> check("demo.add", add)
✔ demo.add: correct
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable

__all__ = [
    "GRADING_ENV",
    "ExerciseError",
    "GradeReport",
    "GradingError",
    "check",
    "checker",
    "exercises",
    "find_exercises",
    "grade_notebook",
    "gradebook_csv",
    "head_answer",
    "run_checker",
    "student_notebook",
]

_CHECKERS: dict[str, Callable[[object], None]] = {}


class ExerciseError(AssertionError):
    """An answer is wrong; the message says what is wrong and what to look at."""


def head_answer(answer, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """A learner's head, given as ``(layer, head)`` or as a label like ``"L3H5"``.

    Raises :class:`ExerciseError` saying how to write it when it is neither, or,
    with ``grid = (n_layers, n_heads)`` of SmolLM2, when no such head exists.
    """
    if isinstance(answer, str):
        from hp_mini.model.sites import parse_head_label

        try:
            layer, head = parse_head_label(answer)
        except ValueError:
            raise ExerciseError(f"write the head as (layer, head) or as a label like 'L3H5', got {answer!r}") from None
    elif isinstance(answer, (tuple, list)) and len(answer) == 2:
        layer, head = int(answer[0]), int(answer[1])
    else:
        raise ExerciseError(f"give the head as a pair (layer, head), got {answer!r}")
    if grid is not None and not (0 <= layer < grid[0] and 0 <= head < grid[1]):
        raise ExerciseError(
            f"L{layer}H{head} does not exist: SmolLM2 has layers 0..{grid[0] - 1} and heads 0..{grid[1] - 1}"
        )
    return layer, head


def checker(name: str) -> Callable[[Callable[[object], None]], Callable[[object], None]]:
    """Register ``fn(answer)`` as the checker of exercise ``name``.

    The checker raises :class:`ExerciseError` (or ``AssertionError``) with a
    helpful message when ``answer`` is wrong, and returns ``None`` otherwise.
    """

    def register(fn: Callable[[object], None]) -> Callable[[object], None]:
        if name in _CHECKERS and _CHECKERS[name] is not fn:
            raise ValueError(f"exercise {name!r} has two checkers")
        _CHECKERS[name] = fn
        return fn

    return register


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def exercises() -> list[str]:
    """The names of all exercises that have a checker."""
    _load_all()
    return sorted(_CHECKERS)


#: Set in the kernel that runs a student's notebook for grading: there :func:`check` hands
#: the answer to the grader, which judges it in its own process (``python -m hp_mini.exercises grade``).
GRADING_ENV = "HP_MINI_GRADING_KERNEL"


def check(name: str, answer: object, *, quiet: bool = False) -> bool:
    """Check a learner's ``answer`` to exercise ``name``.

    Returns True and prints a confirmation when it is right; raises
    :class:`ExerciseError` with an explanation when it is wrong. In a grading
    kernel (:data:`GRADING_ENV` set) it judges nothing: it hands the answer to
    the grader and returns True.
    """
    if os.environ.get(GRADING_ENV):
        from hp_mini.exercises.exchange import hand_in

        hand_in(name, answer)
        if not quiet:
            print(f"{name}: handed in to the grader")
        return True
    run_checker(name, answer)
    if not quiet:
        print(f"✔ {name}: correct")
    return True


def run_checker(name: str, answer: object) -> None:
    """Run the checker of exercise ``name`` on ``answer`` in this process.

    Raises
    ------
    ExerciseError
        When the answer is wrong (an ``AssertionError`` of the checker), or still the stub
        (``NotImplementedError``).
    KeyError
        If no exercise is called ``name``.
    """
    if name not in _CHECKERS:
        module = name.split(".")[0]
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError:
            pass
    if name not in _CHECKERS:
        raise KeyError(f"no exercise is called {name!r}; known exercises: {', '.join(exercises())}")
    try:
        _CHECKERS[name](answer)
    except NotImplementedError:
        raise ExerciseError(f"{name}: the answer is still the stub; replace `raise NotImplementedError` with your code") from None
    except AssertionError as err:
        raise ExerciseError(f"{name}: {err}") from None


def __getattr__(name: str):
    # The notebook tools need nbformat/jupytext/nbclient: import them only when asked for.
    if name in {"grade_notebook", "gradebook_csv", "GradeReport", "GradingError"}:
        from hp_mini.exercises import grading

        return getattr(grading, name)
    if name in {"student_notebook", "find_exercises", "strip_solutions", "Exercise"}:
        from hp_mini.exercises import notebooks

        return getattr(notebooks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
