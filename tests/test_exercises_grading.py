"""The exercise tooling: student notebooks, grading, and the assignment page."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import nbformat
import pytest

from hp_mini.exercises import ExerciseError, check, exercises
from hp_mini.exercises.__main__ import main
from hp_mini.exercises._assignment import BEGIN, END, book_exercises, fill_assignment, render_exercise_list
from hp_mini.exercises._grading import GradeReport, grade_notebook
from hp_mini.exercises._notebooks import find_exercises, read_notebook, strip_solutions, student_notebook

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


@pytest.fixture()
def chapter(tmp_path: Path) -> Path:
    path = tmp_path / "99_demo.md"
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
    report = grade_notebook(chapter, timeout=60)
    grades = report.by_label()
    assert list(grades) == ["ex-demo-right", "ex-demo-wrong", "ex-demo-stub", "ex-demo-crash"]
    assert grades["ex-demo-right"].score == 1 and grades["ex-demo-right"].status == "passed"
    # The solution that follows each exercise would pass: it must not be run.
    assert grades["ex-demo-wrong"].score == 0 and grades["ex-demo-wrong"].status == "failed"
    assert "add(1, 2) returned -1; expected 3" in grades["ex-demo-wrong"].message
    assert grades["ex-demo-stub"].score == 0 and "still the stub" in grades["ex-demo-stub"].message
    assert grades["ex-demo-crash"].score == 0 and "NameError" in grades["ex-demo-crash"].message
    assert (report.score, report.total) == (1, 4)
    assert "1/4" in str(report)


def test_grade_command_on_a_student_notebook(chapter: Path, tmp_path: Path, capsys):
    # The student's notebook as handed out, with one exercise whose check call was deleted.
    nb = student_notebook(chapter)
    body = exercise("removed", "The learner deleted the check", "return a + b")
    extra = strip_solutions(read_notebook_text(tmp_path, HEADER + body)).cells[2:]
    for cell in extra:
        cell.source = cell.source.replace('check("demo.add", add)', "")
    nb.cells.extend(extra)
    student = tmp_path / "student.ipynb"
    nbformat.write(nb, student)
    assert main(["grade", str(student), "--json", "--timeout", "60"]) == 0
    (payload,) = json.loads(capsys.readouterr().out)
    assert (payload["score"], payload["total"]) == (1, 5)
    assert [e["score"] for e in payload["exercises"]] == [1, 0, 0, 0, 0]
    assert payload["exercises"][-1]["label"] == "ex-demo-removed"
    assert payload["exercises"][-1]["status"] == "not checked"


def read_notebook_text(tmp_path: Path, text: str):
    path = tmp_path / "extra.md"
    path.write_text(text, encoding="utf-8")
    return read_notebook(path)


def test_check_records_verdicts_for_grading(tmp_path: Path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("HP_MINI_GRADING_LOG", str(log))
    check("demo.add", lambda a, b: a + b, quiet=True)
    with pytest.raises(ExerciseError):
        check("demo.add", lambda a, b: a * b)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["passed"] for r in records] == [True, False]
    assert "returned" in records[1]["message"]


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


def test_assignment_list_of_a_chapter(chapter: Path, tmp_path: Path):
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: 99_demo\n")
    text = render_exercise_list(book_exercises(tmp_path))
    assert ("The book has 4 exercises in 1 chapter, about 16 minutes of work in all; "
            "1 investigation, marked below.") in text
    assert "**{ref}`A demo chapter <demo-chapter>`** (`99_demo`)" in text
    assert ("| {ref}`A wrong answer <ex-demo-wrong>` | **investigation** | ★★☆ medium | about 10 minutes "
            "| `demo.add` |") in text
    assert "| {ref}`A right answer <ex-demo-right>` | function | ★☆☆ easy | about 2 minutes | `demo.add` |" in text


def _report(notebook: str, scores: dict[str, int]) -> GradeReport:
    from hp_mini.exercises._grading import ExerciseGrade

    grades = [ExerciseGrade(label, label, ["demo.add"], s, "passed" if s else "failed") for label, s in scores.items()]
    return GradeReport(notebook=notebook, grades=grades)


def test_gradebook_csv_has_one_row_per_student():
    import csv
    import io

    from hp_mini.exercises._grading import gradebook_csv

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
    from hp_mini.exercises._grading import gradebook_csv

    with pytest.raises(ValueError, match="at least one GradeReport"):
        gradebook_csv([])
    with pytest.raises(TypeError, match="GradeReport, got dict"):
        gradebook_csv([{"notebook": "a.ipynb"}])
    with pytest.raises(ValueError, match="same student alice"):
        gradebook_csv([_report("a/alice.ipynb", {"ex-a": 1}), _report("b/alice.ipynb", {"ex-a": 0})])


def test_grade_command_writes_the_gradebook(chapter: Path, tmp_path: Path, capsys):
    nb = student_notebook(chapter)
    student = tmp_path / "carol.ipynb"
    nbformat.write(nb, student)
    out = tmp_path / "scores.csv"
    assert main(["grade", str(student), "--csv", str(out), "--timeout", "60"]) == 0
    header, row = out.read_text(encoding="utf-8").splitlines()
    assert header == "student,ex-demo-right,ex-demo-wrong,ex-demo-stub,ex-demo-crash,score,total,percent"
    assert row == "carol,1,0,0,0,1,4,25.0"
    assert "carol.ipynb: 1/4" in capsys.readouterr().out
