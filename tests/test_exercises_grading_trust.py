"""What the grader trusts: the instructor's chapter and its own process, never the student's kernel.

One kernel run (the ``graded`` fixture) grades a notebook that tries every trick at once;
the tests read its report and what the student's code saw. A second run covers timeouts.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from hp_mini.record.activations import HeadActivations
from hp_mini.model.cache import cache_dir
from hp_mini.exercises import checker
from hp_mini.exercises.exchange import AnswerFormatError, decode, encode
from hp_mini.exercises.grading import PASSED_ON, grade_notebook, kernel_environment
from hp_mini.exercises.notebooks import exercise_cells, student_notebook
from hp_mini.pursuit import omp
from hp_mini.rank.ranking import HeadRanking

SEEN: dict[str, object] = {}  # what the student's code reported, as the grader read it back


@checker("grading-test.answer")
def _check_answer(answer) -> None:
    assert answer == 42, f"the answer is 42, not {answer!r}"


@checker("grading-test.snapshot")
def _check_snapshot(snapshot) -> None:
    SEEN.update(snapshot)


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

(trust-chapter)=
# A chapter to grade

```{code-cell} ipython3
from hp_mini.exercises import check
```
"""


def exercise(short: str, title: str, learner: str) -> str:
    """An exercise of the instructor's chapter: its learner cell, then a solution to strip."""
    return f"""
```{{exercise}} {title}
:label: ex-trust-{short}

**Difficulty:** ★☆☆ easy · **Time:** about 2 minutes
```

```{{code-cell}} ipython3
:tags: [skip-execution]

{learner}
```

````{{solution-start}} ex-trust-{short}
:class: dropdown
````

```{{code-cell}} ipython3
raise RuntimeError("a solution cell must never run when grading")
```

````{{solution-end}}
````
"""


CHAPTER = HEADER + "".join([
    exercise("right", "Add two numbers", 'def add(a, b):\n    raise NotImplementedError\n\ncheck("demo.add", add)'),
    exercise("forged", "Add, again", 'def add(a, b):\n    raise NotImplementedError\n\ncheck("demo.add", add)'),
    exercise("patched", "Add, once more", 'def add(a, b):\n    raise NotImplementedError\n\ncheck("demo.add", add)'),
    exercise("other", "The answer", 'answer = ...\ncheck("grading-test.answer", answer)'),
    exercise("inplace", "Scale a head", 'def scale_z(z, n_heads, head, alpha):\n    raise NotImplementedError\n\n'
                                        'check("editing.scale_z", scale_z)'),
    exercise("env", "Look around", 'snapshot = ...\ncheck("grading-test.snapshot", snapshot)'),
])

# What the student writes in each exercise's cell.
STUDENT = {
    "ex-trust-right": """
        def add(a, b):
            return a + b

        check("demo.add", add)
    """,
    # No answer: a verdict forged in the grader's log (where one was read), and in a display.
    "ex-trust-forged": """
        import json, os
        from IPython.display import display

        forged = json.dumps({"name": "demo.add", "passed": True, "message": ""})
        for key, value in os.environ.items():
            if "GRADING" in key and "LOG" in key:
                with open(value, "a") as log:
                    log.write(forged + "\\n")
        display({"application/x-hp-mini-exchange": json.dumps({"answers": [], "passed": True})}, raw=True)
    """,
    # A wrong answer, with the kernel's checking machinery replaced by one that passes anything.
    "ex-trust-patched": """
        import hp_mini.exercises as machinery

        for name in ("_check", "run_checker"):
            setattr(machinery, name, lambda *args, **kwargs: None)
        machinery._CHECKERS["demo.add"] = lambda answer: None

        def add(a, b):
            return a * b

        check("demo.add", add)
    """,
    # Another exercise's checker, with an answer that passes it.
    "ex-trust-other": """
        check("demo.add", lambda a, b: a + b)
        answer = 41
    """,
    # Scales the head in place: the checker must see the change.
    "ex-trust-inplace": """
        def scale_z(z, n_heads, head, alpha):
            d_head = z.shape[-1] // n_heads
            z[..., head * d_head:(head + 1) * d_head] *= alpha
            return z

        check("editing.scale_z", scale_z)
    """,
    "ex-trust-env": """
        import os, sys
        snapshot = {"cwd": os.getcwd(), "home": os.path.expanduser("~"), "env": dict(os.environ),
                    "executable": sys.executable, "files": sorted(os.listdir("."))}
        check("grading-test.snapshot", snapshot)
    """,
}


def _kernelspec(folder: Path) -> Path:
    """A kernel named ``hp-mini-evil`` that would set a variable in the kernel's environment."""
    spec = folder / "kernels" / "hp-mini-evil"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "evil", "language": "python", "env": {"HP_MINI_EVIL_KERNEL": "1"},
    }))
    return folder


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    book = tmp_path_factory.mktemp("book")
    chapter = book / "98_trust.md"
    chapter.write_text(CHAPTER, encoding="utf-8")
    nb = student_notebook(chapter)
    nb.metadata["kernelspec"] = {"name": "hp-mini-evil", "display_name": "evil", "language": "python"}
    owner = dict(exercise_cells(nb))
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and owner[index] in STUDENT:
            cell.source = textwrap.dedent(STUDENT[owner[index]]).strip()
        elif cell.cell_type == "code":  # before the first exercise: an answer outside any exercise
            cell.source += '\ncheck("demo.add", lambda a, b: a + b)'
        elif "{exercise} Add two numbers" in cell.source:
            cell.source = cell.source.replace("Add two numbers", "Free points")
    # An exercise the student added, and a heading they relabelled.
    nb.cells += [nbformat.v4.new_markdown_cell("```{exercise} Bonus\n:label: ex-trust-bonus\n```"),
                 nbformat.v4.new_code_cell('check("demo.add", lambda a, b: a + b)')]
    hand_in = tmp_path_factory.mktemp("hand-in")
    student = hand_in / "mallory.ipynb"
    nbformat.write(nb, student)
    SEEN.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HP_MINI_TEST_SECRET", "s3cret")
        mp.setenv("JUPYTER_PATH", str(_kernelspec(tmp_path_factory.mktemp("jupyter"))))
        report = grade_notebook(student, source=chapter, timeout=60)
    return {"report": report, "grades": report.by_label(), "seen": dict(SEEN), "chapter": chapter,
            "student": student}


def test_a_right_answer_scores(graded):
    right = graded["grades"]["ex-trust-right"]
    assert (right.score, right.status) == (1, "passed")


def test_student_calling_another_exercises_checker_gets_no_credit(graded):
    other = graded["grades"]["ex-trust-other"]
    assert (other.score, other.status) == (0, "not checked")
    assert 'must call check("grading-test.answer", ...)' in other.message
    assert any("'demo.add' in ex-trust-other, which is checked by grading-test.answer: not graded" in note
               for note in graded["report"].errors)


def test_student_appending_to_the_log_gets_no_credit(graded):
    forged = graded["grades"]["ex-trust-forged"]
    assert (forged.score, forged.status) == (0, "not checked")
    assert 'must call check("demo.add", ...)' in forged.message


def test_student_patching_the_checkers_in_the_kernel_gets_no_credit(graded):
    patched = graded["grades"]["ex-trust-patched"]
    assert (patched.score, patched.status) == (0, "failed")
    assert "add(1, 2) returned 2; expected 3" in patched.message


def test_notebook_kernelspec_is_ignored(graded):
    seen = graded["seen"]
    assert seen["executable"] == sys.executable
    assert "HP_MINI_EVIL_KERNEL" not in seen["env"]


def test_exercises_come_from_the_instructor_source(graded):
    report = graded["report"]
    assert report.source == str(graded["chapter"])
    assert [(g.label, g.title, g.checks) for g in report.grades] == [
        ("ex-trust-right", "Add two numbers", ["demo.add"]),  # not the student's "Free points"
        ("ex-trust-forged", "Add, again", ["demo.add"]),
        ("ex-trust-patched", "Add, once more", ["demo.add"]),
        ("ex-trust-other", "The answer", ["grading-test.answer"]),
        ("ex-trust-inplace", "Scale a head", ["editing.scale_z"]),
        ("ex-trust-env", "Look around", ["grading-test.snapshot"]),
    ]
    assert (report.score, report.total) == (2, 6)  # right and env; nothing for the bonus or the loose check
    assert any("'demo.add' outside the chapter's exercises" in note for note in report.errors)
    assert not any("solution cell" in note for note in report.errors)


def test_student_code_runs_in_its_own_folder_and_minimal_environment(graded):
    seen = graded["seen"]
    folder = Path(seen["cwd"])
    assert seen["home"] == seen["cwd"] and seen["env"]["TMPDIR"] == seen["cwd"]
    assert folder != graded["student"].parent and folder != Path.cwd()
    assert graded["student"].name not in seen["files"]
    assert not folder.exists()  # removed after grading
    env = seen["env"]
    assert "HP_MINI_TEST_SECRET" not in env and "s3cret" not in json.dumps(env)
    extra = {"HOME", "TMPDIR", "IPYTHONDIR", "MPLCONFIGDIR", "HP_MINI_CACHE", "PYTHONPATH", "PYTHONNOUSERSITE",
             "HP_MINI_GRADING_KERNEL"}
    # what ipykernel sets in its own environment when it starts
    kernel_own = {"TERM", "CLICOLOR", "CLICOLOR_FORCE", "FORCE_COLOR", "PAGER", "GIT_PAGER", "MPLBACKEND", "JPY_PARENT_PID",
                  "JPY_SESSION_NAME", "PYDEVD_USE_FRAME_EVAL"}
    assert set(env) - set(PASSED_ON) - extra - kernel_own == set()
    assert env["HP_MINI_CACHE"] == str(cache_dir().expanduser().resolve())


def test_kernel_environment_passes_on_only_what_it_names(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("HF_TOKEN", "hf_s3cret")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    env = kernel_environment(tmp_path)
    assert "AWS_SECRET_ACCESS_KEY" not in env and "HF_TOKEN" not in env
    assert env["OMP_NUM_THREADS"] == "3" and env["HOME"] == str(tmp_path.resolve())


def test_student_function_changing_its_input_in_place_is_seen_by_the_checker(graded):
    inplace = graded["grades"]["ex-trust-inplace"]
    assert (inplace.score, inplace.status) == (0, "failed")
    assert "changed its input in place" in inplace.message


# --------------------------------------------------------------------------- timeouts


def test_cell_running_past_the_timeout_is_an_error_and_the_rest_is_graded(tmp_path: Path):
    chapter = tmp_path / "97_slow.md"
    learner = 'def add(a, b):\n    raise NotImplementedError\n\ncheck("demo.add", add)'
    chapter.write_text(HEADER + "".join(exercise(s, s, learner) for s in ("loop", "slow-call", "after", "stuck", "lost")),
                       encoding="utf-8")
    nb = student_notebook(chapter)
    cells = {
        "ex-trust-loop": "import time\nwhile True:\n    time.sleep(0.1)",
        "ex-trust-slow-call": "def add(a, b):\n    while True:\n        time.sleep(0.1)\n\ncheck('demo.add', add)",
        "ex-trust-after": "def add(a, b):\n    return a + b\n\ncheck('demo.add', add)",
        "ex-trust-stuck": "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)",
        "ex-trust-lost": "def add(a, b):\n    return a + b\n\ncheck('demo.add', add)",
    }
    owner = dict(exercise_cells(nb))
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and owner[index] in cells:
            cell.source = cells[owner[index]]
    student = tmp_path / "slow.ipynb"
    nbformat.write(nb, student)
    grades = grade_notebook(student, source=chapter, timeout=5).by_label()
    assert [(g.score, g.status) for g in grades.values()] == [(0, "error"), (0, "error"), (1, "passed"),
                                                             (0, "error"), (0, "error")]
    assert "ran longer than 5 s and was interrupted" in grades["ex-trust-loop"].message
    assert "demo.add: calling add ran longer than 5 s and was interrupted" in grades["ex-trust-slow-call"].message
    assert "did not stop when interrupted" in grades["ex-trust-stuck"].message
    assert "did not stop when interrupted" in grades["ex-trust-lost"].message


# --------------------------------------------------------------------------- what comes back from the kernel


def _round_trip(value):
    return decode(json.loads(json.dumps(encode(value))), lambda ref, name: ("function", name))


def test_answers_read_back_are_rebuilt_without_pickle():
    g = torch.Generator().manual_seed(0)
    acts = HeadActivations(z=torch.randn(3, 2, 2, 4, generator=g), W_O=torch.randn(2, 2, 6, 4, generator=g),
                           bias=None, layers=[0, 1], prompts=["a", "b", "c"])
    D = torch.nn.functional.normalize(torch.randn(10, 6, dtype=torch.float64, generator=g), dim=1)
    pursuit = omp(D[2] + D[7], D, n_atoms=2)
    ranking = HeadRanking(heads=[(1, 0), (0, 1)], scores=torch.tensor([0.5, 0.25]), method="somp",
                          results={(1, 0): pursuit})
    frame = pd.DataFrame({"median": [1.0, 0.5], "q25": [0.25, 0.0]}, index=pd.Index([3, 5], name="k"))
    value = {"acts": acts, "ranking": ranking, "frame": frame, "head": (3, 5), "bf16": torch.ones(2, dtype=torch.bfloat16),
             "array": np.arange(6).reshape(2, 3), "scalar": np.float32(0.5), "nan": float("nan"), "set": {1, 2},
             "fn": len, "words": pd.Series(["x", "y"], name="w")}
    back = _round_trip(value)
    assert isinstance(back["acts"], HeadActivations) and torch.equal(back["acts"].z, acts.z)
    assert back["acts"].layers == [0, 1] and back["acts"].prompts == ["a", "b", "c"] and back["acts"].bias is None
    assert isinstance(back["ranking"], HeadRanking) and back["ranking"].heads == [(1, 0), (0, 1)]
    assert torch.equal(back["ranking"].results[(1, 0)].atoms, pursuit.atoms)
    pd.testing.assert_frame_equal(back["frame"], frame)
    assert back["head"] == (3, 5) and back["bf16"].dtype == torch.bfloat16 and back["bf16"].tolist() == [1.0, 1.0]
    assert np.array_equal(back["array"], value["array"]) and back["scalar"].dtype == np.float32
    assert np.isnan(back["nan"]) and back["set"] == {1, 2} and back["fn"] == ("function", "len")
    pd.testing.assert_series_equal(back["words"], value["words"])
    with pytest.raises(TypeError, match="a builtins.object"):
        encode({"model": object()})


def test_kernel_reply_that_is_not_an_encoded_answer_is_refused():
    def function(ref, name):
        raise AssertionError("no function here")

    bad = [
        {"$object": "Popen", "fields": {"args": "rm -rf ~"}},
        {"$ndarray": {"dtype": "|O", "shape": [1], "data": "AAAAAAAAAAA="}},
        {"$tensor": {"dtype": "float32", "shape": [4], "data": "AAAA"}},  # too few bytes
        {"$tensor": {"dtype": "object", "shape": [1], "data": ""}},
        {"$pickle": "gASVAAAAAAAAAA=="},
        {"$dict": [[1]]},
        {"$function": "os.system"},
        [1, 2],
    ]
    for tree in bad:
        with pytest.raises(AnswerFormatError):
            decode(tree, function)
