"""hp_mini.viz.page.setup: the one call at the top of every chapter of the book."""

from __future__ import annotations

import io
import logging
import os
import warnings

import pytest
import torch
import tqdm.auto

from hp_mini.viz import page


@pytest.fixture
def clean_page(monkeypatch):
    """No progress-bar, quick-mode or thread variable set; tqdm, torch's threads and the
    root logger's filters are put back afterwards."""
    for variable in (*page.PROGRESS_BAR_VARIABLES, page.QUICK_VARIABLE, "OMP_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.auto.tqdm)
    threads, filters = torch.get_num_threads(), list(logging.getLogger().filters)
    yield
    torch.set_num_threads(threads)
    logging.getLogger().filters[:] = filters


def test_setup_turns_progress_bars_off_and_reads_quick_mode(clean_page, monkeypatch):
    assert page.setup() is False
    assert all(os.environ[v] == "1" for v in page.PROGRESS_BAR_VARIABLES)
    assert tqdm.auto.tqdm is page.NoBar
    out = io.StringIO()
    bar = tqdm.auto.tqdm(range(3), disable=False, file=out)
    assert bar.disable and list(bar) == [0, 1, 2] and out.getvalue() == ""
    monkeypatch.setenv(page.QUICK_VARIABLE, "1")
    assert page.setup() is True
    monkeypatch.setenv(page.QUICK_VARIABLE, "0")
    assert page.setup() is False


def test_setup_keeps_the_bars_a_reader_turned_on(clean_page, monkeypatch):
    original = tqdm.auto.tqdm
    monkeypatch.setenv("TQDM_DISABLE", "0")
    page.setup()
    assert tqdm.auto.tqdm is original and os.environ["TQDM_DISABLE"] == "0"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_setup_refuses_an_unknown_quick_mode_and_changes_nothing(clean_page, monkeypatch):
    original = tqdm.auto.tqdm
    monkeypatch.setenv(page.QUICK_VARIABLE, "yes")
    with pytest.raises(ValueError, match="HP_BOOK_QUICK='yes': set it to 1"):
        page.setup()
    assert "TQDM_DISABLE" not in os.environ and tqdm.auto.tqdm is original


def test_setup_caps_torch_threads_at_the_usable_cores(clean_page, monkeypatch):
    monkeypatch.setattr(page, "usable_cores", lambda: 1)
    torch.set_num_threads(3)
    page.setup()
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(page, "usable_cores", lambda: 8)
    torch.set_num_threads(2)
    page.setup()
    assert torch.get_num_threads() == 2  # never more threads than torch had


def test_setup_leaves_threads_alone_when_omp_num_threads_is_set(clean_page, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(page, "usable_cores", lambda: 1)
    torch.set_num_threads(3)
    page.setup()
    assert torch.get_num_threads() == 3


def test_usable_cores_are_the_cores_this_process_may_use():
    want = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert page.usable_cores() == want >= 1


def _runtime_warnings(module: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page.setup(hide_runtime_warnings=True)
        warnings.warn_explicit("capped", RuntimeWarning, "x.py", 1, module=module)
        warnings.warn_explicit("renamed", DeprecationWarning, "x.py", 2, module=module)
    return [str(w.message) for w in caught]


def test_setup_hides_hp_mini_runtime_warnings_only_when_asked(clean_page):
    assert _runtime_warnings("hp_mini.rank.ranking") == ["renamed"]
    assert _runtime_warnings("__main__") == ["capped", "renamed"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page.setup()
        warnings.warn_explicit("capped", RuntimeWarning, "x.py", 1, module="hp_mini.rank")
    assert [str(w.message) for w in caught] == ["capped"]


def test_setup_hides_the_named_log_messages_once(clean_page):
    root = logging.getLogger()
    before, seen = len(root.filters), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    root.addHandler(handler)
    try:
        page.setup(hide_logs=["No pretrained weights loaded"])
        page.setup(hide_logs=["No pretrained weights loaded"])
        root.warning("No pretrained weights loaded for model 'shapes-clip'")
        root.warning("something else")
    finally:
        root.removeHandler(handler)
    assert seen == ["something else"]
    assert len(root.filters) == before + 1


def test_setup_refuses_hide_logs_that_are_not_a_list_of_messages(clean_page):
    with pytest.raises(TypeError, match=r"write \['No pretrained'\]"):
        page.setup(hide_logs="No pretrained")
    with pytest.raises(TypeError, match="non-empty strings"):
        page.setup(hide_logs=["", 3])
    assert "TQDM_DISABLE" not in os.environ


@pytest.mark.parametrize(("seconds", "text"), [(0.2, "1 s"), (12.4, "12 s"), (89, "89 s"), (100, "about 1.5 min"),
                                               (168, "about 3 min"), (150, "about 2.5 min"), (600, "about 10 min")])
def test_run_time_text_reads_like_the_books_run_times(seconds, text):
    assert page.run_time_text(seconds) == text


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf")])
def test_run_time_text_refuses_a_time_that_is_not_one(seconds):
    with pytest.raises(ValueError, match="finite number >= 0"):
        page.run_time_text(seconds)


def test_glue_run_time_publishes_what_myst_nb_reads_for_the_page(clean_page):
    """The oracle is myst-nb's own glue reader, on the output the call displays."""
    import nbformat
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from myst_nb.ext.glue import extract_glue_data_cell

    InteractiveShell.instance()
    page.setup()
    with capture_output() as captured:
        assert page.glue_run_time() is None
    (shown,) = captured.outputs
    text = shown.data["application/papermill.record/text/plain"]
    cell = nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output("display_data", data=shown.data,
                                                                      metadata=shown.metadata)])
    ((key, output),) = extract_glue_data_cell(cell)
    assert key == page.RUN_TIME_KEY == "run_time"
    assert output["data"] == {"text/plain": text}
    assert cell.outputs == []  # published for the text, not shown in the cell
    assert text.endswith(" s") or text.startswith("about ")
