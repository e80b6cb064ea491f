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
import warnings
from collections.abc import Iterable

import tqdm.auto
import tqdm.std

__all__ = ["PROGRESS_BAR_VARIABLES", "QUICK_VARIABLE", "NoBar", "setup", "usable_cores"]

#: The environment variables that turn progress bars off: tqdm's, and those of the
#: Hugging Face ``datasets`` and ``huggingface_hub`` libraries (read when they are imported).
PROGRESS_BAR_VARIABLES = ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")

#: The environment variable that asks for a chapter's quick mode (``1``; ``0`` or unset: off).
QUICK_VARIABLE = "HP_BOOK_QUICK"


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
