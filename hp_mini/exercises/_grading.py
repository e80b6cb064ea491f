"""Grade a student's notebook: run it, see which exercises' checks pass.

The notebook's solutions (``{solution-start}`` ... ``{solution-end}``) are removed, its code
cells are run in order in a fresh kernel (a cell that fails does not stop the run), and every
:func:`hp_mini.exercises.check` call records its verdict in a log. An exercise scores 1 when
its learner cell ran at least one check and all of its checks passed; otherwise 0, with the
checker's message (what is wrong) or the reason nothing was checked.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import GRADING_LOG_ENV
from ._notebooks import exercise_cells, exercises_in, read_notebook, strip_solutions

__all__ = ["ExerciseGrade", "GradeReport", "gradebook_csv", "grade_notebook"]


@dataclass
class ExerciseGrade:
    """The verdict on one exercise."""

    label: str
    title: str
    checks: list[str]
    score: int  #: 1 when every check of the exercise ran and passed, else 0
    status: str  #: "passed", "failed", "not checked" or "error"
    message: str = ""


@dataclass
class GradeReport:
    """Per-exercise scores of one notebook."""

    notebook: str
    grades: list[ExerciseGrade] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  #: cells that raised something other than a check

    @property
    def score(self) -> int:
        return sum(g.score for g in self.grades)

    @property
    def total(self) -> int:
        return len(self.grades)

    def by_label(self) -> dict[str, ExerciseGrade]:
        return {g.label: g for g in self.grades}

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([asdict(g) for g in self.grades], columns=["label", "title", "checks", "score", "status", "message"])

    def to_json(self) -> str:
        return json.dumps(
            {"notebook": self.notebook, "score": self.score, "total": self.total,
             "exercises": [asdict(g) for g in self.grades], "errors": self.errors},
            indent=2, ensure_ascii=False,
        )

    def __str__(self) -> str:
        width = max([len(g.label) for g in self.grades] + [8])
        lines = [f"{self.notebook}: {self.score}/{self.total}"]
        for g in self.grades:
            first = g.message.strip().splitlines()[0] if g.message.strip() else ""
            lines.append(f"  {g.label:<{width}}  {g.score}  {g.status:<11}  {first[:160]}")
        return "\n".join(lines)


def _read_log(path: Path, start: int) -> tuple[list[dict], int]:
    if not path.exists():
        return [], start
    data = path.read_bytes()
    records = [json.loads(line) for line in data[start:].decode("utf-8").splitlines() if line.strip()]
    return records, len(data)


def _error_of(cell) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename')}: {out.get('evalue')}"
    return ""


def grade_notebook(path: str | Path, *, timeout: int = 600, kernel_name: str | None = None) -> GradeReport:
    """Run a student's notebook without its solutions and score each exercise.

    Parameters
    ----------
    path
        The student's notebook (``.ipynb``, or a MyST ``.md`` chapter).
    timeout
        Seconds a single cell may run before it is interrupted (it then counts as failed).
    kernel_name
        Jupyter kernel to run it in; default: the notebook's own kernelspec, else ``python3``.

    Returns
    -------
    GradeReport
        ``.grades`` (one :class:`ExerciseGrade` per exercise, in notebook order), ``.score``, ``.total``.

    Examples
    --------
    >>> report = grade_notebook("student.ipynb")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    student.ipynb: 1/2
      ex-demo-add   1  passed
      ex-demo-mul   0  failed       demo.add: add(1, 2) returned -1; expected 3
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    path = Path(path)
    nb = strip_solutions(read_notebook(path))
    exercises = exercises_in(nb, chapter=path.stem, source=str(path))
    owner = dict(exercise_cells(nb))
    kernel = kernel_name or nb.metadata.get("kernelspec", {}).get("name") or "python3"

    records: dict[str, list[dict]] = {ex.label: [] for ex in exercises}
    loose: dict[str, list[dict]] = {}  # checks outside any exercise, keyed by checker name
    report = GradeReport(notebook=str(path))
    cell_errors: dict[str, str] = {}

    with tempfile.TemporaryDirectory(prefix="hp_mini_grade_") as tmp:
        log = Path(tmp) / "checks.jsonl"
        env = dict(os.environ, **{GRADING_LOG_ENV: str(log)})
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name=kernel,
            allow_errors=True,
            skip_cells_with_tag="hp-mini-grading-never-skip",
            resources={"metadata": {"path": str(path.resolve().parent)}},
        )
        offset = 0
        dead = None
        with client.setup_kernel(env=env):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                label = owner.get(index)
                if dead is None:
                    try:
                        client.execute_cell(cell, index)
                    except CellTimeoutError:
                        msg = f"cell {index} ran longer than {timeout} s and was interrupted"
                        report.errors.append(msg)
                        if label:
                            cell_errors.setdefault(label, msg)
                    except DeadKernelError as err:
                        dead = f"the kernel died at cell {index}: {err}"
                        report.errors.append(dead)
                    else:
                        err = _error_of(cell)
                        if err:
                            report.errors.append(f"cell {index}: {err}")
                            if label:
                                cell_errors.setdefault(label, err)
                elif label:
                    cell_errors.setdefault(label, dead)
                new, offset = _read_log(log, offset)
                for record in new:
                    if label in records:
                        records[label].append(record)
                    else:
                        loose.setdefault(record["name"], []).append(record)

    for ex in exercises:
        got = records[ex.label]
        if not got:
            why = cell_errors.get(ex.label) or (
                "no check(...) call ran for this exercise" if ex.checks else "this exercise has no check(...) call"
            )
            report.grades.append(ExerciseGrade(ex.label, ex.title, ex.checks, 0, "error" if ex.label in cell_errors else "not checked", why))
            continue
        failed = [r for r in got if not r["passed"]]
        if failed:
            report.grades.append(ExerciseGrade(ex.label, ex.title, ex.checks, 0, "failed", failed[0]["message"]))
        else:
            report.grades.append(ExerciseGrade(ex.label, ex.title, ex.checks, 1, "passed"))
    for name, got in loose.items():
        failed = [r for r in got if not r["passed"]]
        report.grades.append(
            ExerciseGrade(f"check:{name}", name, [name], 0 if failed else 1, "failed" if failed else "passed", failed[0]["message"] if failed else "")
        )
    return report


def gradebook_csv(reports: list[GradeReport], *, student_from=None) -> str:
    """The scores of several notebooks as one CSV table, one row per student.

    The columns are ``student``, one column per exercise (its label, 1 or 0),
    ``score``, ``total`` and ``percent``: the layout that the CSV grade imports of
    Moodle, Canvas and Blackboard map column by column. The exercises are the union
    over all reports, in the order of their first appearance; an exercise missing
    from a notebook (a deleted cell) scores 0 there.

    Parameters
    ----------
    reports : list of GradeReport
        The result of :func:`grade_notebook` for each student's notebook.
    student_from : callable, optional
        Maps a notebook path to the student's identifier (default: the file name
        without its suffix, so ``alice.ipynb`` gives ``alice``).

    Returns
    -------
    str
        The CSV text, with a header line.

    Raises
    ------
    ValueError
        If ``reports`` is empty, or two notebooks give the same student.
    TypeError
        If an item is not a :class:`GradeReport`.
    """
    reports = list(reports)
    if not reports:
        raise ValueError("give at least one GradeReport (the result of grade_notebook)")
    bad = sorted({type(r).__name__ for r in reports if not isinstance(r, GradeReport)})
    if bad:
        raise TypeError(f"every item must be a GradeReport, got {', '.join(bad)}")
    name_of = student_from or (lambda path: Path(path).stem)
    students = [str(name_of(r.notebook)) for r in reports]
    twice = sorted({s for s in students if students.count(s) > 1})
    if twice:
        raise ValueError(
            f"two notebooks belong to the same student {', '.join(twice)}: give each student's notebook "
            "a file name of its own, or pass student_from"
        )
    labels: list[str] = []
    for r in reports:
        labels += [g.label for g in r.grades if g.label not in labels]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["student", *labels, "score", "total", "percent"])
    for student, r in zip(students, reports):
        scores = {g.label: g.score for g in r.grades}
        row = [scores.get(label, 0) for label in labels]
        total = len(labels)
        writer.writerow([student, *row, sum(row), total, f"{100 * sum(row) / total:.1f}" if total else "0.0"])
    return out.getvalue()
