"""Grade a student's notebook against the instructor's chapter.

What is graded comes from the instructor's chapter (a MyST ``.md`` of ``book/``, or the
``source`` given): its exercises, their titles, and the checker that each exercise's cell
calls (``check("<name>", ...)``). The student's notebook supplies only the code and the
answers. The notebook's solutions (``{solution-start}`` ... ``{solution-end}``) are removed,
and its code cells run in order (a cell that fails does not stop the run) in a separate
kernel process:

* always the grader's own Python interpreter (the notebook's kernelspec is ignored);
* in a fresh temporary folder, which is also its ``HOME`` and ``TMPDIR``, deleted afterwards;
* with a minimal environment: ``PATH``, the locale, thread counts, ``CUDA_VISIBLE_DEVICES``,
  ``LD_LIBRARY_PATH``, the Hugging Face offline switches, ``HP_MINI_CACHE`` (the grader's
  model cache) and ``PYTHONPATH`` (where the grader's hp_mini is); nothing else of the
  grader's environment (no tokens, keys or passwords that it may hold).

In that kernel :func:`hp_mini.exercises.check` judges nothing: it hands the answer in.
After each cell the grader reads the answers handed in back, encoded as JSON with raw
arrays (never pickle; see :mod:`hp_mini.exercises.exchange`), and runs the checker that
the instructor's chapter names for the cell's exercise, in the grader's own process. A
function answer comes back as a stand-in: when the checker calls it, the call runs in the
kernel and only its result comes back. An exercise scores 1 when every checker that the
chapter names for it received an answer and all of them passed; otherwise 0, with the
checker's message (what is wrong) or the reason nothing was checked. An answer to any
other checker, or outside the chapter's exercises, scores nothing. A cell, or a call of a
student's function, that runs past the timeout is interrupted and counts as an error; a
kernel that does not stop when interrupted is shut down, and the rest of the notebook
scores 0.

What this defends against: forged verdicts (no verdict ever comes from the kernel, and
there is no log to append to), credit from another exercise's checker, exercises added
to or retitled in the notebook, the notebook choosing its kernel, and the student's code
reading the grader's environment variables. Answers read back can only be plain data,
tensors, arrays, DataFrames, a few of hp_mini's result classes and stand-ins for
functions; the grader never unpickles anything from the kernel.

What it does not defend against: it is not a sandbox. The student's code runs as the
grader's user, with that user's file permissions and network: it can read any file the
user can read, and change any file the user can write, including hp_mini itself (the
checkers' modules are imported before any student code runs, but not all that they import
later, and a later grading run would use the changed files), the book, and the model
cache that the investigations' checkers read; it can connect to the user's other
processes (their Jupyter kernels, say). It
can use all the CPU, memory and disk it gets, start processes that outlive the kernel,
and send back an answer large enough to exhaust the grader's memory. A checker that
takes part of its reference from the answer (the chapter's rankings or activations
passed along with it) trusts them. Grade untrusted notebooks as a user that can write
nothing but its temporary folder, in a container or virtual machine, without network.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import importlib
import io
import json
import os
import pickle
import sys
import tempfile
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hp_mini.exercises import GRADING_ENV, ExerciseError, exercises, run_checker
from hp_mini.exercises.exchange import MIME, AnswerFormatError, decode, raised
from hp_mini.exercises.notebooks import Exercise, chapter_label, exercise_cells, exercises_in, read_notebook, strip_solutions

__all__ = ["ExerciseGrade", "GradeReport", "GradingError", "find_chapter", "gradebook_csv", "grade_notebook", "kernel_environment"]

#: The only kernel the grader starts: its own interpreter, whatever the notebook names.
KERNEL_NAME = "hp-mini-grader"

#: Variables of the grader's environment that the kernel gets (when they are set).
PASSED_ON = (
    "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
    "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
)

_START_TIMEOUT = 300  # seconds for the kernel to start and import hp_mini
_PING_TIMEOUT = 10  # seconds for an interrupted kernel to answer again
_IOPUB_TIMEOUT = 5  # seconds for a cell's last outputs to arrive after its reply
_TIMED_OUT = "HpMiniGradingTimeout"  # the error nbclient reports for a cell it interrupted


class GradingError(ValueError):
    """A notebook or chapter that cannot be graded: not a notebook, no chapter to grade it against, ..."""


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
    errors: list[str] = field(default_factory=list)  #: cells that failed, answers that were not graded
    source: str = ""  #: the instructor's chapter the notebook was graded against

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
            {"notebook": self.notebook, "source": self.source, "score": self.score, "total": self.total,
             "exercises": [asdict(g) for g in self.grades], "errors": self.errors},
            indent=2, ensure_ascii=False,
        )

    def __str__(self) -> str:
        width = max([len(g.label) for g in self.grades] + [8])
        against = f" (against {self.source})" if self.source else ""
        lines = [f"{self.notebook}{against}: {self.score}/{self.total}"]
        for g in self.grades:
            first = g.message.strip().splitlines()[0] if g.message.strip() else ""
            lines.append(f"  {g.label:<{width}}  {g.score}  {g.status:<11}  {first[:160]}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- inputs


def _read(path: Path, what: str):
    import nbformat

    if not path.is_file():
        raise GradingError(f"{what} {path} does not exist (or is not a file)")
    try:
        nb = read_notebook(path)
    except (nbformat.reader.NotJSONError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GradingError(
            f"{what} {path} is not a Jupyter notebook: it is not valid JSON ({str(err)[:200]}); "
            "hand in the .ipynb file that Jupyter saves"
        ) from None
    except Exception as err:
        raise GradingError(f"{what} {path} cannot be read as a notebook: {type(err).__name__}: {str(err)[:200]}") from None
    if not isinstance(getattr(nb, "cells", None), list):
        raise GradingError(f"{what} {path} is not a notebook: it has no list of cells")
    return nb


def find_chapter(notebook: str | Path, book: str | Path = "book") -> Path:
    """The instructor's chapter in ``book`` that a student's notebook answers.

    Tried in turn: the chapter named in the notebook's metadata (``hp_mini.chapter``,
    written by ``python -m hp_mini.exercises student``), the chapter whose label (the
    ``(label)=`` line before its title) the notebook carries, and the chapter with the
    notebook's file name. The chapter itself is always the instructor's file.

    Raises
    ------
    GradingError
        If ``book`` is not a folder, or no chapter in it matches.
    """
    notebook, book = Path(notebook), Path(book)
    return _find_chapter(notebook, _read(notebook, "notebook"), book)


def _find_chapter(notebook: Path, nb, book: Path) -> Path:
    if not book.is_dir():
        raise GradingError(
            f"no book folder {book} to find the chapter of {notebook} in: run from the repository root, "
            "or give the chapter (--source book/CHAPTER.md)"
        )
    chapters = sorted(p for p in book.iterdir() if p.suffix in (".md", ".ipynb") and p.is_file())
    meta = nb.metadata.get("hp_mini", {})
    named = meta.get("chapter") if isinstance(meta, dict) else None
    for path in chapters:
        if isinstance(named, str) and path.stem == named:
            return path
    label = chapter_label(nb)
    if label:
        for path in chapters:
            with contextlib.suppress(GradingError):
                if chapter_label(_read(path, "chapter")) == label:
                    return path
    for path in chapters:
        if path.stem == notebook.stem:
            return path
    clues = ", ".join(c for c in (f"metadata chapter {named!r}" if named else "", f"label {label!r}" if label else "",
                                  f"file name {notebook.stem!r}") if c)
    raise GradingError(
        f"no chapter in {book}/ matches {notebook} ({clues}): give the chapter it answers "
        "(--source book/CHAPTER.md, or source= in Python)"
    )


# --------------------------------------------------------------------------- the kernel


def kernel_environment(home: str | Path) -> dict[str, str]:
    """The whole environment of a grading kernel whose folder (and ``HOME``) is ``home``.

    Only the variables of :data:`PASSED_ON` come from the grader's environment; the
    kernel also gets ``HP_MINI_CACHE`` (the grader's model cache), ``PYTHONPATH`` (so it
    imports the grader's hp_mini) and :data:`hp_mini.exercises.GRADING_ENV`.
    """
    from hp_mini.model.cache import cache_dir

    home = str(Path(home).resolve())
    env = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
    env.setdefault("PATH", os.defpath)
    package_root = str(Path(__file__).resolve().parents[2])
    env.update(
        HOME=home, TMPDIR=home, IPYTHONDIR=str(Path(home) / ".ipython"), MPLCONFIGDIR=str(Path(home) / ".matplotlib"),
        HP_MINI_CACHE=str(cache_dir().expanduser().resolve()), PYTHONPATH=package_root, PYTHONNOUSERSITE="1",
    )
    env[GRADING_ENV] = "1"
    return env


def _kernel_specs():
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    class FixedKernelSpecs(KernelSpecManager):
        """Knows one kernel: ipykernel on the grader's own interpreter."""

        def find_kernel_specs(self) -> dict[str, str]:
            return {}

        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name="Python 3 (hp_mini grader)", language="python", name=KERNEL_NAME,
            )

    return FixedKernelSpecs()


class _KernelProblem(BaseException):
    """The kernel timed out, died, or sent no reply.

    A BaseException, so that no checker's ``except Exception`` turns it into a pass.
    """


class _Unreadable(Exception):
    """An answer or a result that could not be read back from the kernel."""


class _StudentFunction:
    """Stands in for a function that lives in the student's kernel; calling it runs it there."""

    def __init__(self, kernel: _Kernel, ref: int, name: str):
        self._kernel, self._ref = kernel, ref
        self.__name__ = self.__qualname__ = name

    def __call__(self, *args, **kwargs):
        return self._kernel.call(self._ref, self.__name__, args, kwargs)

    def __reduce__(self):  # sent back to the kernel as the student's object itself
        from hp_mini.exercises.exchange import lookup

        return lookup, (self._ref,)

    def __repr__(self) -> str:
        return f"<function {self.__name__} (the student's)>"


class _Kernel:
    """One kernel running one student's notebook, in its own folder and environment."""

    def __init__(self, folder: Path, timeout: int):
        import nbformat
        from jupyter_client import AsyncKernelManager
        from nbclient import NotebookClient

        self.folder = folder / "work"
        self.folder.mkdir()
        self.timeout = timeout
        self.dead: str | None = None
        self.index = 0
        self._last_reply: dict = {}
        km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=_kernel_specs(),
                                connection_file=str(folder / "kernel.json"), transport="ipc", ip=str(folder / "kernel"))
        # The client keeps each cell it runs in its notebook: a scratch one, every cell at index 0.
        scratch = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
        self.client = NotebookClient(
            scratch, km=km, timeout=timeout, allow_errors=True, shutdown_kernel="immediate", record_timing=False,
            skip_cells_with_tag="hp-mini-grading-never-skip", iopub_timeout=_IOPUB_TIMEOUT,
            interrupt_on_timeout=True, error_on_timeout={"ename": _TIMED_OUT, "evalue": "", "traceback": []},
            on_cell_executed=self._executed,
        )
        self._stack = contextlib.ExitStack()

    def _executed(self, cell, cell_index, execute_reply) -> None:
        self._last_reply = execute_reply or {}

    def __enter__(self) -> _Kernel:
        try:
            self._stack.enter_context(self.client.setup_kernel(
                env=kernel_environment(self.folder), cwd=str(self.folder), cleanup_kc=True))
        except Exception as err:
            self._stack.close()
            raise GradingError(f"the grading kernel did not start: {type(err).__name__}: {err}") from None
        try:
            self.hand_over(max(self.timeout, _START_TIMEOUT))  # imports hp_mini there; nothing is handed in yet
        except _KernelProblem as err:
            self._stack.close()
            raise GradingError(f"the grading kernel cannot import hp_mini: {err}") from None
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()

    def _execute(self, source, timeout: int, store_history: bool):
        """Run ``source`` (or a cell) in the kernel; the cell with its outputs.

        Raises ``_KernelProblem`` when it timed out (after interrupting it) or the kernel is
        lost (then ``dead`` says why).
        """
        import nbformat
        from nbclient.exceptions import CellTimeoutError, DeadKernelError

        cell = nbformat.v4.new_code_cell(source) if isinstance(source, str) else source
        if self.dead:
            raise _KernelProblem(self.dead)
        self.client.timeout = timeout
        self._last_reply = {}
        try:
            self.client.execute_cell(cell, 0, store_history=store_history)
        except CellTimeoutError as err:  # no answer even after the interrupt
            self._lose(f"the kernel stopped answering at cell {self.index} ({str(err).splitlines()[0]})")
        except DeadKernelError as err:
            self._lose(f"the kernel died at cell {self.index}: {err}")
        if self._last_reply.get("content", {}).get("ename") == _TIMED_OUT:
            self._answers_again(timeout)
            raise _KernelProblem(f"ran longer than {timeout} s and was interrupted")
        return cell

    def _answers_again(self, timeout: int) -> None:
        """After an interrupt: check that the kernel runs code again, else give it up."""
        import nbformat
        from nbclient.exceptions import CellTimeoutError, DeadKernelError

        self.client.timeout = _PING_TIMEOUT
        self._last_reply = {}
        try:
            self.client.execute_cell(nbformat.v4.new_code_cell("pass"), 0, store_history=False)
        except (CellTimeoutError, DeadKernelError):
            self._last_reply = {"content": {"ename": _TIMED_OUT}}
        if self._last_reply.get("content", {}).get("ename") == _TIMED_OUT:
            self._lose(f"cell {self.index} ran longer than {timeout} s and the kernel did not stop when interrupted; "
                       "the rest of the notebook did not run")

    def _lose(self, why: str) -> None:
        from jupyter_core.utils import run_sync

        self.dead = why
        with contextlib.suppress(Exception):
            run_sync(self.client.km.shutdown_kernel)(now=True)
        raise _KernelProblem(why)

    def run(self, cell, index: int) -> str:
        """Run one of the student's cells; its error (``""`` when none)."""
        self.index = index
        try:
            self._execute(cell, self.timeout, True)
        except _KernelProblem as err:
            return self.dead or f"cell {index} {err}"
        return _error_of(cell)

    def _reply(self, source: str, what: str, timeout: int | None = None) -> dict:
        try:
            cell = self._execute(source, timeout or self.timeout, False)
        except _KernelProblem as err:
            raise _KernelProblem(self.dead or f"{what} {err}") from None
        texts = [out.get("data", {}).get(MIME) for out in cell.outputs if out.get("output_type") == "display_data"]
        texts = [t for t in texts if isinstance(t, str)]
        if not texts:
            why = _error_of(cell) or "no reply"
            raise _KernelProblem(f"the kernel did not answer the grader's request ({why})")
        try:
            reply = json.loads(texts[-1])
        except (ValueError, RecursionError):
            raise _KernelProblem("the kernel's reply to the grader is not valid JSON") from None
        if not isinstance(reply, dict):
            raise _KernelProblem("the kernel's reply to the grader is not a JSON object")
        return reply

    def hand_over(self, timeout: int | None = None) -> list[tuple[str, object]]:
        """The answers handed in during the last cell: ``(name, value)``, a value an ``_Unreadable`` if need be."""
        reply = self._reply('__import__("hp_mini.exercises.exchange", fromlist=["hand_over"]).hand_over()',
                            "reading the answers back", timeout)
        answers = reply.get("answers")
        if not isinstance(answers, list):
            raise _KernelProblem("the kernel's reply lists no answers")
        out = []
        for item in answers:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise _KernelProblem("the kernel's reply holds an answer without a name")
            if "error" in item:
                out.append((item["name"], _Unreadable(str(item["error"]))))
                continue
            try:
                out.append((item["name"], decode(item.get("value"), self._function)))
            except AnswerFormatError as err:
                out.append((item["name"], _Unreadable(f"the answer could not be read back ({err})")))
        return out

    def _function(self, ref: int, name: str) -> _StudentFunction:
        return _StudentFunction(self, ref, name)

    def call(self, ref: int, name: str, args: tuple, kwargs: dict):
        """Call the student's function ``ref`` in the kernel; its result, read back."""
        try:
            payload = base64.b64encode(pickle.dumps((args, kwargs))).decode()
        except Exception as err:
            raise _KernelProblem(f"the grader cannot send the arguments of {name} to the kernel: {err}") from None
        reply = self._reply(
            f'__import__("hp_mini.exercises.exchange", fromlist=["answer_call"]).answer_call({int(ref)}, "{payload}")',
            f"calling {name}",
        )
        if isinstance(reply.get("raised"), dict):
            raise raised(reply["raised"].get("type"), reply["raised"].get("message"))
        if "error" in reply:
            raise _Unreadable(f"{name}: {reply['error']}")
        try:
            returned = decode(reply.get("value"), self._function)
        except AnswerFormatError as err:
            raise _Unreadable(f"what {name} returned could not be read back ({err})") from None
        if not isinstance(returned, dict) or set(returned) != {"result", "changed"} or not isinstance(returned["changed"], dict):
            raise _Unreadable(f"what {name} returned could not be read back (a malformed reply)")
        for key, new in returned["changed"].items():
            _copy_into(args[int(key)] if isinstance(key, str) and key.isdecimal() and int(key) < len(args)
                       else kwargs.get(key), new)
        return returned["result"]


def _copy_into(target, new) -> None:
    """Show an in-place change the student's function made to a tensor or array argument."""
    import numpy as np
    import torch

    if isinstance(target, torch.Tensor) and isinstance(new, torch.Tensor) and new.shape == target.shape:
        with torch.no_grad():
            target.copy_(new.to(target.dtype))
    elif isinstance(target, np.ndarray) and isinstance(new, np.ndarray) and new.shape == target.shape:
        target[...] = new


def _error_of(cell) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename')}: {out.get('evalue')}"
    return ""


def _printable(text: str, limit: int = 4000) -> str:
    """``text`` without control characters (a terminal escape sequence from the kernel, say)."""
    text = "".join(c for c in str(text) if c in "\n\t" or unicodedata.category(c) != "Cc")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- grading


def _judge(name: str, answer: object) -> tuple[str, str]:
    """Run the instructor's checker ``name`` on an answer: ``(status, message)``."""
    if isinstance(answer, _Unreadable):
        return "failed", f"{name}: {answer}"
    try:
        run_checker(name, answer)
    except (ExerciseError, _Unreadable) as err:
        return "failed", str(err)
    except _KernelProblem as err:
        return "error", f"{name}: {err}"
    except Exception as err:
        return "failed", f"{type(err).__name__}: {err}"
    return "passed", ""


def _run(nb, owner: dict[int, str | None], by_label: dict[str, Exercise], kernel: _Kernel, report: GradeReport):
    """Run the notebook's cells; judge the answers handed in to each exercise's checkers.

    Returns ``{label: [(name, status, message), ...]}`` and the first error of each
    exercise's cells; notes what went wrong elsewhere in ``report.errors``.
    """
    verdicts: dict[str, list[tuple[str, str, str]]] = {label: [] for label in by_label}
    cell_errors: dict[str, str] = {}

    def note(text: str) -> None:
        report.errors.append(_printable(text, 1000))

    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        label = owner.get(index)
        if kernel.dead:
            if label in by_label:
                cell_errors.setdefault(label, kernel.dead)
            continue
        err = kernel.run(cell, index)
        if err:
            note(err if err.startswith(("cell ", "the kernel")) else f"cell {index}: {err}")
            if label in by_label:
                cell_errors.setdefault(label, err)
        try:
            answers = kernel.hand_over() if not kernel.dead else []
        except _KernelProblem as problem:
            note(f"cell {index}: {problem}")
            continue
        for name, answer in answers:
            ex = by_label.get(label)
            if ex is None or name not in ex.checks:
                where = (f"in {label}, which is checked by {', '.join(ex.checks) or 'no checker'}" if ex
                         else "outside the chapter's exercises")
                note(f"cell {index}: an answer to {name!r} {where}: not graded")
                continue
            verdicts[label].append((name, *_judge(name, answer)))
    if kernel.dead and kernel.dead not in report.errors:
        note(kernel.dead)
    return verdicts, cell_errors


def grade_notebook(path: str | Path, *, source: str | Path | None = None, timeout: int = 600) -> GradeReport:
    """Run a student's notebook without its solutions and score each exercise of its chapter.

    Parameters
    ----------
    path
        The student's notebook (``.ipynb``, or a MyST ``.md``).
    source
        The instructor's chapter (``book/03_pursuing_heads.md``) that lists the exercises
        and their checkers, or a folder of chapters to find it in (:func:`find_chapter`);
        default ``"book"``.
    timeout
        Seconds a single cell, or a single call of a student's function by a checker, may
        run before it is interrupted (it then counts as an error).

    Returns
    -------
    GradeReport
        ``.grades`` (one :class:`ExerciseGrade` per exercise of the chapter, in its order),
        ``.score``, ``.total``, ``.source``.

    Raises
    ------
    GradingError
        If the notebook is not a notebook, no chapter matches it, the chapter has no
        exercises, or the grading kernel does not start.

    Examples
    --------
    >>> report = grade_notebook("student.ipynb", source="book/99_demo.md")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    student.ipynb (against book/99_demo.md): 1/2
      ex-demo-add   1  passed
      ex-demo-mul   0  failed       demo.add: add(1, 2) returned -1; expected 3
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise GradingError(f"timeout must be a positive number of seconds, got {timeout!r}")
    path = Path(path)
    student = _read(path, "notebook")
    source = Path("book" if source is None else source)
    chapter = _find_chapter(path, student, source) if source.is_dir() or not source.suffix else source
    expected = exercises_in(strip_solutions(_read(chapter, "chapter")), chapter=chapter.stem, source=str(chapter))
    if not expected:
        raise GradingError(f"the chapter {chapter} has no exercises: is it the chapter that {path} answers?")
    try:
        nb = strip_solutions(student)
    except ValueError as err:
        raise GradingError(f"notebook {path}: {err}") from None
    importlib.import_module("hp_mini")  # the library and every checker, imported before any student code runs
    exercises()
    report = GradeReport(notebook=str(path), source=str(chapter))
    owner = dict(exercise_cells(nb))
    with tempfile.TemporaryDirectory(prefix="hp_mini_grade_", ignore_cleanup_errors=True) as tmp, \
            _Kernel(Path(tmp), timeout) as kernel:
        verdicts, cell_errors = _run(nb, owner, {ex.label: ex for ex in expected}, kernel, report)

    present = {label for label in owner.values() if label}
    report.grades.extend(_grade(ex, verdicts[ex.label], cell_errors, present) for ex in expected)
    return report


def _grade(ex, got: list[tuple[str, str, str]], cell_errors: dict[str, str], present: set[str]) -> ExerciseGrade:
    """One exercise's grade from its checkers' verdicts ``(name, status, message)``, its cell's error and its label."""
    failed = next(((status, msg) for _, status, msg in got if status != "passed"), None)
    missing = [name for name in ex.checks if name not in {n for n, _, _ in got}]
    if failed:
        status, message = failed
    elif not got and ex.label in cell_errors:
        status, message = "error", cell_errors[ex.label]
    elif not ex.checks:
        status, message = "not checked", "the chapter names no checker for this exercise"
    elif ex.label not in present:
        status, message = "not checked", f"the notebook has no exercise labelled {ex.label}: was its text deleted?"
    elif missing:
        calls = ", ".join(f'check("{name}", ...)' for name in missing)
        status, message = "not checked", f"no answer was handed in: the exercise's cell must call {calls}"
    else:
        status, message = "passed", ""
    return ExerciseGrade(ex.label, ex.title, list(ex.checks), int(status == "passed"), status, _printable(message))


# --------------------------------------------------------------------------- the gradebook

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A spreadsheet cell that cannot run as a formula.

    Text starting with ``= + - @``, a tab or a carriage return gets a leading ``'``;
    line breaks inside it become spaces (they would break the row).
    """
    if not isinstance(value, str):
        return value
    if value.startswith(_FORMULA_START):
        value = "'" + value
    return value.replace("\r", " ").replace("\n", " ")


def gradebook_csv(reports: list[GradeReport], *, student_from=None) -> str:
    """The scores of several notebooks as one CSV table, one row per student.

    The columns are ``student``, one column per exercise (its label, 1 or 0),
    ``score``, ``total`` and ``percent``: the layout that the CSV grade imports of
    Moodle, Canvas and Blackboard map column by column. The exercises are the union
    over all reports, in the order of their first appearance; an exercise missing
    from a notebook (a deleted cell) scores 0 there. A text cell that starts with
    ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is written with a leading
    ``'``, so that no spreadsheet runs it as a formula; line breaks in it become spaces.

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
    writer.writerow([_cell(v) for v in ["student", *labels, "score", "total", "percent"]])
    for student, r in zip(students, reports):
        scores = {g.label: g.score for g in r.grades}
        row = [scores.get(label, 0) for label in labels]
        total = len(labels)
        writer.writerow([_cell(student), *row, sum(row), total, f"{100 * sum(row) / total:.1f}" if total else "0.0"])
    return out.getvalue()
