"""How a page of the book runs: one call at the top of every chapter.

Every chapter of the book, and every notebook downloaded from it, starts with::

    import hp_mini.viz.page

    QUICK = hp_mini.viz.page.setup()

:func:`setup` turns progress bars off (on a page they would stay frozen), runs
torch on the cores this process may use, reads the quick mode that
``HP_BOOK_QUICK=1`` asks for, and hides the warnings a chapter explains in its
text. It needs nothing but hp_mini, so the call works the same in the book's
build, in Jupyter and on Colab.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterable

import tqdm.auto
import tqdm.std

__all__ = ["PROGRESS_BAR_VARIABLES", "QUICK_VARIABLE", "RUN_TIME_KEY", "NoBar", "glue_run_time", "run_time_text",
           "setup", "usable_cores"]

#: The environment variables that turn progress bars off: tqdm's, and those of the
#: Hugging Face ``datasets`` and ``huggingface_hub`` libraries (read when they are imported).
PROGRESS_BAR_VARIABLES = ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")

#: The environment variable that asks for a chapter's quick mode (``1``; ``0`` or unset: off).
QUICK_VARIABLE = "HP_BOOK_QUICK"

#: The name under which :func:`glue_run_time` publishes a page's run time
#: (the page's text shows it with ``{glue:text}`run_time```).
RUN_TIME_KEY = "run_time"

# The MIME prefix and metadata of a value a notebook publishes for its page's text (the
# scrapbook "glue" record that myst-nb reads when it renders the executed notebook).
_GLUE_PREFIX = "application/papermill.record/"

_started: list[float] = []


class NoBar(tqdm.std.tqdm):
    """A tqdm that never draws (notebook bars ignore ``TQDM_DISABLE``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "disable": True})


class _HiddenMessage(logging.Filter):
    """Drops the log records whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def usable_cores() -> int:
    """The number of CPU cores this process may run on (its affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _quick_mode() -> bool:
    value = os.environ.get(QUICK_VARIABLE, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(
            f"{QUICK_VARIABLE}={value!r}: set it to 1 for the quick mode, or to 0 (or unset it) "
            "for the full one"
        )
    return value == "1"


def _as_messages(hide_logs: Iterable[str]) -> list[str]:
    if isinstance(hide_logs, (str, bytes)):
        raise TypeError(f"hide_logs takes a list of messages, got the string {hide_logs!r}: write [{hide_logs!r}]")
    messages = list(hide_logs)
    bad = [m for m in messages if not isinstance(m, str) or not m]
    if bad:
        raise TypeError(f"hide_logs takes non-empty strings (parts of the messages to hide), got {bad!r}")
    return messages


def setup(*, hide_runtime_warnings: bool = False, hide_logs: Iterable[str] = ()) -> bool:
    """Set up a page of the book, and say whether it runs in quick mode.

    What it does, each time it is called:

    - **Progress bars off.** Each of :data:`PROGRESS_BAR_VARIABLES` is set to ``1``
      unless the environment already sets it. While ``TQDM_DISABLE`` is ``1``,
      ``tqdm.auto.tqdm`` (what hp_mini, transformers and the Hugging Face libraries
      draw their bars with) is replaced by :class:`NoBar`, which never draws, since
      notebook bars ignore ``TQDM_DISABLE``. A reader who wants the bars sets
      ``TQDM_DISABLE=0`` before starting Jupyter.
    - **Threads.** Unless ``OMP_NUM_THREADS`` is set, torch runs on at most
      :func:`usable_cores` threads (the cores this process may use), not on every
      core of the machine: on a shared machine, or a container limited to a few
      cores, more threads than cores only wait for each other.
    - **Warnings.** With ``hide_runtime_warnings``, the ``RuntimeWarning``\\ s
      raised inside hp_mini's modules (a head's pursuit that stops early, say) are
      not shown; those that point at the caller's own line (a number of atoms
      capped at a dictionary's size) still are. Each message of ``hide_logs``
      hides the records of the root logger that contain it.

    Parameters
    ----------
    hide_runtime_warnings : bool, default False
        Hide the ``RuntimeWarning``\\ s raised inside hp_mini's modules (those
        whose warning points at a line of hp_mini).
    hide_logs : list of str, default ()
        Parts of log messages not to show, e.g. ``["No pretrained weights loaded"]``
        for a model that is trained on the page.

    Returns
    -------
    bool
        Whether the page runs in quick mode: ``HP_BOOK_QUICK=1`` in the environment.

    Raises
    ------
    ValueError
        ``HP_BOOK_QUICK`` is set to something else than ``0`` or ``1``.
    TypeError
        ``hide_logs`` is a string, or holds something else than non-empty strings.

    Examples
    --------
    >>> import hp_mini.viz.page
    >>> QUICK = hp_mini.viz.page.setup()                                   # doctest: +SKIP
    """
    quick = _quick_mode()
    messages = _as_messages(hide_logs)
    if not _started:
        _started.append(time.perf_counter())
    for variable in PROGRESS_BAR_VARIABLES:
        os.environ.setdefault(variable, "1")
    if os.environ["TQDM_DISABLE"] == "1":
        tqdm.auto.tqdm = NoBar
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, min(torch.get_num_threads(), usable_cores())))
    if hide_runtime_warnings:
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="hp_mini")
    root = logging.getLogger()
    shown = {f.text for f in root.filters if isinstance(f, _HiddenMessage)}
    for message in messages:
        if message not in shown:
            root.addFilter(_HiddenMessage(message))
    return quick


def run_time_text(seconds: float | None = None) -> str:
    """A page's run time as a reader reads it: ``"12 s"``, ``"about 2.5 min"``.

    Parameters
    ----------
    seconds : float, optional
        The time to write; by default the time since the page's first
        :func:`setup` call.

    Raises
    ------
    RuntimeError
        ``seconds`` not given and :func:`setup` never called in this process.
    ValueError
        ``seconds`` negative or not finite.
    """
    if seconds is None:
        if not _started:
            raise RuntimeError("run_time_text() measures from hp_mini.viz.page.setup(): call setup() first")
        seconds = time.perf_counter() - _started[0]
    seconds = float(seconds)
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"about {round(seconds / 30) / 2:g} min"


def glue_run_time() -> None:
    """Publish the page's run time so far (:func:`run_time_text`) for its text.

    The last cell of a chapter calls this; the chapter's text shows the value
    where it writes ``{glue:text}`run_time``` (myst-nb reads it from the
    executed notebook), so the run time a page states is the one its build
    measured, not a number typed by hand. In a live kernel (Jupyter, Colab)
    nothing is shown.
    """
    from IPython.display import display

    text = run_time_text()
    display({_GLUE_PREFIX + "text/plain": text}, raw=True,
            metadata={"scrapbook": {"name": RUN_TIME_KEY, "mime_prefix": _GLUE_PREFIX}})
