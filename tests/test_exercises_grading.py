"""The exercise tooling: student notebooks, grading, and the assignment page."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import textwrap
from pathlib import Path

import nbformat
import pytest

from hp_mini.exercises import GRADING_ENV, ExerciseError, check, exercises
from hp_mini.exercises.__main__ import main
from hp_mini.exercises.assignment import BEGIN, END, book_exercises, fill_assignment, render_exercise_list, toc_files
from hp_mini.exercises.exchange import take_handed_in
from hp_mini.exercises.grading import ExerciseGrade, GradeReport, GradingError, gradebook_csv, grade_notebook
from hp_mini.exercises.notebooks import (
    exercise_cells,
    find_exercises,
    read_notebook,
    strip_solutions,
    student_notebook,
)

ROOT = Path(__file__).resolve().parents[1]

HEADER = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

(demo-chapter)=
# A demo chapter

```{code-cell} ipython3
from hp_mini.exercises import check
```
"""


def exercise(short: str, title: str, learner_body: str, difficulty: str = "★☆☆ easy", minutes: int = 2,
             tag: str = "") -> str:
    """One exercise in the book's convention; the solution is always correct."""
    return f"""
```{{exercise}} {title}
:label: ex-demo-{short}

**Difficulty:** {difficulty} · **Time:** about {minutes} minutes{tag}

Complete `add`.
```

```{{code-cell}} ipython3
:tags: [skip-execution]

def add(a, b):
{textwrap.indent(learner_body, "    ")}

check("demo.add", add)
```

````{{solution-start}} ex-demo-{short}
:class: dropdown
````

The solution adds.

```{{code-cell}} ipython3
def add(a, b):
    return a + b

check("demo.add", add)
```

````{{solution-end}}
````

Text after the solution of {short}.
"""


@pytest.fixture(scope="module")
def chapter(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("book") / "99_demo.md"
    path.write_text(
        HEADER
        + exercise("right", "A right answer", "return a + b")
        + exercise("wrong", "A wrong answer", "return a - b", difficulty="★★☆ medium", minutes=10,
                   tag=" · **Investigation**")
        + exercise("stub", "An untouched stub", "# YOUR CODE HERE\nraise NotImplementedError")
        + exercise("crash", "An answer that crashes", "return undefined_name"),
        encoding="utf-8",
    )
    return path


def test_strip_solutions_removes_solution_cells_and_keeps_the_rest(chapter: Path):
    nb = strip_solutions(read_notebook(chapter))
    text = "\n".join(c.source for c in nb.cells)
    assert "solution-start" not in text and "solution-end" not in text
    assert "The solution adds." not in text
    assert "return a + b\n\ncheck" in text  # the right learner answer stays
    assert text.count('check("demo.add", add)') == 4  # one learner cell per exercise, no solution cells
    for short in ("right", "wrong", "stub", "crash"):
        assert f"Text after the solution of {short}." in text
    learner = [c for c in nb.cells if c.cell_type == "code" and "check(" in c.source]
    assert all("skip-execution" not in c.metadata.get("tags", []) for c in learner)


def test_student_notebook_is_valid_and_has_no_outputs(chapter: Path, tmp_path: Path, capsys):
    out = tmp_path / "student.ipynb"
    assert main(["student", str(chapter), "-o", str(out)]) == 0
    assert "solutions removed" in capsys.readouterr().out
    nb = nbformat.read(out, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert not any("solution-start" in c.source for c in nb.cells)


def test_find_exercises_reads_labels_difficulty_time_and_checks(chapter: Path):
    found = find_exercises(chapter)
    assert [e.label for e in found] == ["ex-demo-right", "ex-demo-wrong", "ex-demo-stub", "ex-demo-crash"]
    wrong = found[1]
    assert (wrong.title, wrong.difficulty, wrong.time) == ("A wrong answer", "★★☆ medium", "about 10 minutes")
    assert wrong.checks == ["demo.add"]
    assert (wrong.chapter, wrong.chapter_label, wrong.chapter_title) == ("99_demo", "demo-chapter", "A demo chapter")


def test_grading_scores_each_exercise(chapter: Path):
    report = grade_notebook(chapter, source=chapter, timeout=60)
    grades = report.by_label()
    assert list(grades) == ["ex-demo-right", "ex-demo-wrong", "ex-demo-stub", "ex-demo-crash"]
    assert grades["ex-demo-right"].score == 1 and grades["ex-demo-right"].status == "passed"
    # The solution that follows each exercise would pass: it must not be run.
    assert grades["ex-demo-wrong"].score == 0 and grades["ex-demo-wrong"].status == "failed"
    assert "add(1, 2) returned -1; expected 3" in grades["ex-demo-wrong"].message
    assert grades["ex-demo-stub"].score == 0 and "still the stub" in grades["ex-demo-stub"].message
    assert grades["ex-demo-crash"].score == 0 and "NameError" in grades["ex-demo-crash"].message
    assert (report.score, report.total) == (1, 4)
    assert "1/4" in str(report) and report.source == str(chapter)


@pytest.fixture(scope="module")
def graded_by_command(chapter: Path, tmp_path_factory) -> dict:
    """``grade --json --csv`` on carol's notebook: the handed-out one, edited (one kernel run)."""
    folder = tmp_path_factory.mktemp("hand-in")
    nb = student_notebook(chapter)
    owner = dict(exercise_cells(nb))
    for index, cell in enumerate(nb.cells):  # carol deletes the check call of the first exercise
        if owner[index] == "ex-demo-right" and cell.cell_type == "code":
            cell.source = cell.source.replace('check("demo.add", add)', "")
    body = exercise("bonus", "An exercise the learner added", "return a + b")
    nb.cells.extend(strip_solutions(read_notebook_text(folder, HEADER + body)).cells[2:])
    student = folder / "carol.ipynb"
    nbformat.write(nb, student)
    out = folder / "scores.csv"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        # the chapter is found in its folder by the notebook's metadata
        code = main(["grade", str(student), "--source", str(chapter.parent), "--json", "--csv", str(out),
                     "--timeout", "60"])
    return {"code": code, "json": json.loads(stdout.getvalue()), "csv": out.read_text(encoding="utf-8")}


def test_grade_command_on_a_student_notebook(graded_by_command: dict, chapter: Path):
    assert graded_by_command["code"] == 0
    (payload,) = graded_by_command["json"]
    assert payload["source"] == str(chapter)
    assert (payload["score"], payload["total"]) == (0, 4)  # the added exercise is not the chapter's
    assert [e["label"] for e in payload["exercises"]] == ["ex-demo-right", "ex-demo-wrong", "ex-demo-stub", "ex-demo-crash"]
    right = payload["exercises"][0]
    assert (right["score"], right["status"]) == (0, "not checked")
    assert 'must call check("demo.add", ...)' in right["message"]
    assert any("'demo.add' outside the chapter's exercises" in note for note in payload["errors"])


def test_grade_command_writes_the_gradebook(graded_by_command: dict):
    header, row = graded_by_command["csv"].splitlines()
    assert header == "student,ex-demo-right,ex-demo-wrong,ex-demo-stub,ex-demo-crash,score,total,percent"
    assert row == "carol,0,0,0,0,0,4,0.0"


def read_notebook_text(folder: Path, text: str):
    path = folder / "extra.md"
    path.write_text(text, encoding="utf-8")
    return read_notebook(path)


def test_check_in_a_grading_kernel_hands_the_answer_in_without_judging(monkeypatch, capsys):
    take_handed_in()
    wrong = lambda a, b: a * b  # noqa: E731
    monkeypatch.setenv(GRADING_ENV, "1")
    assert check("demo.add", wrong) is True  # no ExerciseError: the grader judges it
    assert "handed in to the grader" in capsys.readouterr().out
    assert take_handed_in() == [("demo.add", wrong)] and take_handed_in() == []
    monkeypatch.delenv(GRADING_ENV)
    with pytest.raises(ExerciseError, match="returned 2; expected 3"):
        check("demo.add", wrong)
    assert take_handed_in() == []


def test_every_exercise_in_the_book_has_a_checker():
    known = set(exercises())
    for ex in book_exercises(ROOT):
        assert ex.checks, f"{ex.chapter}: exercise {ex.label} calls no check(...)"
        for name in ex.checks:
            assert name in known, f"{ex.chapter}: exercise {ex.label} calls check({name!r}), which has no checker"
        assert ex.difficulty and ex.time, f"{ex.chapter}: exercise {ex.label} lacks its **Difficulty:** · **Time:** line"


def test_every_chapter_with_exercises_has_an_investigation():
    chapters: dict[str, bool] = {}
    for ex in book_exercises(ROOT):
        chapters[ex.chapter] = chapters.get(ex.chapter, False) or ex.investigation
    assert len(chapters) >= 9, chapters
    assert all(chapters.values()), [c for c, has in chapters.items() if not has]


def test_assignment_page_is_filled_with_every_exercise():
    page = (ROOT / "book" / "assignment.md").read_text(encoding="utf-8")
    filled = fill_assignment(page, ROOT)
    found = book_exercises(ROOT)
    for ex in found:
        assert f"<{ex.label}>`" in filled, f"{ex.label} is missing from the assignment page"
    assert filled.count("{ref}`") >= len(found)
    assert filled.startswith(page.split(BEGIN)[0]) and filled.endswith(page.split(END)[1])


def test_assignment_list_of_a_chapter(chapter: Path):
    (chapter.parent / "_toc.yml").write_text("format: jb-book\nroot: 99_demo\n")
    text = render_exercise_list(book_exercises(chapter.parent))
    assert ("The book has 4 exercises in 1 chapter, about 16 minutes of work in all; "
            "1 investigation, marked below.") in text
    assert "**{ref}`A demo chapter <demo-chapter>`** (`99_demo`)" in text
    assert ("| {ref}`A wrong answer <ex-demo-wrong>` | **investigation** | ★★☆ medium | about 10 minutes "
            "| `demo.add` |") in text
    assert "| {ref}`A right answer <ex-demo-right>` | function | ★☆☆ easy | about 2 minutes | `demo.add` |" in text


def _report(notebook: str, scores: dict[str, int]) -> GradeReport:
    grades = [ExerciseGrade(label, label, ["demo.add"], s, "passed" if s else "failed") for label, s in scores.items()]
    return GradeReport(notebook=notebook, grades=grades)


def test_gradebook_csv_has_one_row_per_student():
    text = gradebook_csv([
        _report("hand-in/alice.ipynb", {"ex-a": 1, "ex-b": 0}),
        _report("hand-in/bob.ipynb", {"ex-a": 1, "ex-b": 1, "ex-c": 1}),
    ])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["student", "ex-a", "ex-b", "ex-c", "score", "total", "percent"]
    assert rows[0] == {"student": "alice", "ex-a": "1", "ex-b": "0", "ex-c": "0",
                       "score": "1", "total": "3", "percent": "33.3"}
    assert (rows[1]["student"], rows[1]["score"], rows[1]["percent"]) == ("bob", "3", "100.0")
    named = gradebook_csv([_report("x/7.ipynb", {"ex-a": 1})], student_from=lambda p: f"id-{Path(p).stem}")
    assert named.splitlines()[1] == "id-7,1,1,1,100.0"


def test_gradebook_csv_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one GradeReport"):
        gradebook_csv([])
    with pytest.raises(TypeError, match="GradeReport, got dict"):
        gradebook_csv([{"notebook": "a.ipynb"}])
    with pytest.raises(ValueError, match="same student alice"):
        gradebook_csv([_report("a/alice.ipynb", {"ex-a": 1}), _report("b/alice.ipynb", {"ex-a": 0})])


def test_gradebook_csv_escapes_formula_cells():
    reports = [
        _report("hand-in/=HYPERLINK(1).ipynb", {"=cmd|' /C calc'!A0": 1, "ex-b": 1}),
        _report("hand-in/+bob.ipynb", {"ex-b": 0}),
        _report("hand-in/-carol.ipynb", {"ex-b": 1}),
        _report("hand-in/@dave.ipynb", {"ex-b": 1}),
        _report("hand-in/\terin.ipynb", {"ex-b": 1}),
        _report("hand-in/\rfay.ipynb", {"ex-b": 1}),
        _report("hand-in/gus.ipynb", {"ex-b": 1}),
    ]
    rows = list(csv.reader(io.StringIO(gradebook_csv(reports))))
    assert rows[0][1] == "'=cmd|' /C calc'!A0"
    assert [row[0] for row in rows[1:]] == ["'=HYPERLINK(1)", "'+bob", "'-carol", "'@dave", "'\terin", "' fay", "gus"]
    dangerous = ("=", "+", "-", "@", "\t", "\r")
    assert not any(cell.startswith(dangerous) for row in rows for cell in row)
    assert rows[1][1:] == ["1", "1", "2", "2", "100.0"]  # numbers are left alone


def test_notebook_that_is_not_json_gets_a_clear_error(chapter: Path, tmp_path: Path, capsys):
    broken = tmp_path / "dave.ipynb"
    broken.write_text("{ this is not json", encoding="utf-8")
    with pytest.raises(GradingError, match=r"dave.ipynb is not a Jupyter notebook: it is not valid JSON"):
        grade_notebook(broken, source=chapter)
    with pytest.raises(GradingError, match=r"does not exist"):
        grade_notebook(tmp_path / "nobody.ipynb", source=chapter)
    assert main(["grade", str(broken), "--source", str(chapter)]) == 1
    err = capsys.readouterr().err
    assert "cannot grade" in err and "not valid JSON" in err and "1 of 1 notebook(s) could not be graded" in err


def test_chapter_not_found_gets_a_clear_error(chapter: Path, tmp_path: Path):
    nb = student_notebook(chapter)
    nb.metadata.pop("hp_mini")
    for cell in nb.cells:
        cell.source = cell.source.replace("(demo-chapter)=", "")
    lost = tmp_path / "erin.ipynb"
    nbformat.write(nb, lost)
    with pytest.raises(GradingError, match=r"no chapter in .* matches .*erin.ipynb .*--source book/CHAPTER.md"):
        grade_notebook(lost, source=chapter.parent)
    with pytest.raises(GradingError, match="no book folder"):
        grade_notebook(lost, source=tmp_path / "no-book")
    with pytest.raises(GradingError, match="chapter .*missing.md does not exist"):
        grade_notebook(lost, source=tmp_path / "missing.md")
    empty = tmp_path / "no_exercises.md"
    empty.write_text(HEADER, encoding="utf-8")
    with pytest.raises(GradingError, match="has no exercises"):
        grade_notebook(lost, source=empty)
    with pytest.raises(GradingError, match="timeout must be a positive number"):
        grade_notebook(lost, source=chapter, timeout=0)


def test_book_solutions_pass_through_the_grader(tmp_path: Path):
    """Every function exercise of the book, graded from its solution cell in one kernel."""
    source = ["---", "jupytext:", "  text_representation:", "    extension: .md", "    format_name: myst", "---",
              "", "(book-solutions)=", "# The book's function exercises", ""]
    cells = [nbformat.v4.new_markdown_cell("(book-solutions)=\n# The book's function exercises"),
             nbformat.v4.new_code_cell("import math, torch, numpy as np, pandas as pd\n"
                                       "from hp_mini.exercises import check")]
    labels = []
    for path in toc_files(ROOT):
        if path.name == "assignment.md":
            continue
        functions = {ex.label: ex for ex in find_exercises(path) if not ex.investigation}
        nb = read_notebook(path)
        for index, label in exercise_cells(nb):
            cell = nb.cells[index]
            solution = (cell.cell_type == "code" and "check(" in cell.source
                        and "skip-execution" not in cell.metadata.get("tags", []))
            if label in functions and solution:
                ex = functions.pop(label)
                directive = f"```{{exercise}} {ex.title}\n:label: {label}\n```"
                source += [directive, "", "```{code-cell} ipython3",
                           *(f'check("{name}", answer)' for name in ex.checks), "```", ""]
                cells += [nbformat.v4.new_markdown_cell(directive), nbformat.v4.new_code_cell(cell.source)]
                labels.append(label)
        assert not functions, f"{path.name}: no solution cell found for {sorted(functions)}"
    assert len(labels) >= 15
    (tmp_path / "solutions.md").write_text("\n".join(source), encoding="utf-8")
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / "solutions.ipynb")
    report = grade_notebook(tmp_path / "solutions.ipynb", source=tmp_path / "solutions.md", timeout=120)
    assert [g.label for g in report.grades] == labels
    assert [(g.label, g.status, g.message) for g in report.grades if g.score != 1] == []
