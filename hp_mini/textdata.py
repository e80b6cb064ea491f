"""The small text data sets that ship with hp_mini, loaded through ``datasets``.

Every data set is a set of JSON Lines files under ``hp_mini/data/text/`` (its
``README.md`` gives the provenance and licence of each). They load with the
ordinary ``datasets.load_dataset("json", data_files=...)``, so a chapter that
uses them switches to a hub data set by changing one call.

==================  ==========================  ==============================================
name                splits                      one row
==================  ==========================  ==============================================
``"qa"``            selection, evaluation       question, answers, category, group
``"toxicity"``      selection, evaluation       prompt, topic
``"toxic_words"``   selection, held_out         word
``"sentences"``     train                       text, topic
==================  ==========================  ==============================================

Example
-------
>>> from hp_mini.textdata import load_text_dataset, qa_prompt
>>> qa = load_text_dataset("qa", split="evaluation")
>>> sorted(set(qa["group"]))
['country', 'other']
>>> qa_prompt("In which country is the Eiffel Tower?")
'Q: In which country is the Eiffel Tower?\\nA:'
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = [
    "TEXT_DATASETS",
    "data_files",
    "load_text_dataset",
    "profanity_lexicon",
    "qa_prompt",
    "text_data_dir",
    "toxic_words",
]

# name -> {split: file name}
TEXT_DATASETS: dict[str, dict[str, str]] = {
    "qa": {"selection": "qa_selection.jsonl", "evaluation": "qa_evaluation.jsonl"},
    "toxicity": {"selection": "toxicity_selection.jsonl", "evaluation": "toxicity_evaluation.jsonl"},
    "toxic_words": {"selection": "toxic_words_selection.jsonl", "held_out": "toxic_words_held_out.jsonl"},
    "sentences": {"train": "sentences.jsonl"},
}

# Two solved examples put in front of every question: a 135M model answers far
# more often, and in the expected short form, when it has seen the format.
QA_FEWSHOT = "Q: What is the capital of Canada?\nA: Ottawa\n\nQ: How many legs does a cat have?\nA: four\n\n"


def text_data_dir() -> Path:
    """The folder that holds the shipped JSONL files."""
    return Path(str(resources.files("hp_mini") / "data" / "text"))


def data_files(name: str) -> dict[str, str]:
    """``{split: path}`` of a shipped data set, ready for ``load_dataset("json", data_files=...)``."""
    if name not in TEXT_DATASETS:
        raise KeyError(f"no shipped text data set is called {name!r}; known: {', '.join(sorted(TEXT_DATASETS))}")
    root = text_data_dir()
    files = {split: str(root / fname) for split, fname in TEXT_DATASETS[name].items()}
    missing = [p for p in files.values() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"data files of {name!r} are missing: {missing}; reinstall hp_mini")
    return files


def load_text_dataset(name: str, *, split: str | None = None):
    """Load a shipped data set with ``datasets.load_dataset("json", ...)``.

    Parameters
    ----------
    name : str
        One of :data:`TEXT_DATASETS`: ``"qa"``, ``"toxicity"``, ``"toxic_words"``, ``"sentences"``.
    split : str, optional
        One split (a ``datasets.Dataset``); all of them (a ``DatasetDict``) when omitted.

    Returns
    -------
    datasets.Dataset or datasets.DatasetDict
    """
    from datasets import load_dataset

    files = data_files(name)
    if split is not None and split not in files:
        raise KeyError(f"{name!r} has no split {split!r}; its splits are {', '.join(files)}")
    return load_dataset("json", data_files=files, split=split)


def qa_prompt(question: str, *, fewshot: bool = False) -> str:
    """The completion-style prompt of a question: ``"Q: ...\\nA:"``.

    With ``fewshot=True`` two solved examples (:data:`QA_FEWSHOT`) come first.
    """
    return (QA_FEWSHOT if fewshot else "") + f"Q: {question.strip()}\nA:"


def toxic_words(split: str, *, lexicon: bool = True) -> list[str]:
    """The selection or held-out toxic words (``split`` is ``"selection"`` or ``"held_out"``).

    Heads are chosen with the selection words (the shipped list, mild insults
    and swear words) and their effect is measured on the held-out words, so the
    two lists are disjoint. A hand-written list alone is too short to measure
    anything on a few dozen continuations of a small model (it may never occur
    at all), so by default the held-out words follow a fixed rule: the shipped
    held-out list plus every entry of the published lexicon of
    ``better-profanity`` (MIT licence, about 900 English profanities), minus
    every selection word. No word is chosen by looking at what the model
    generates.

    Parameters
    ----------
    split : {"selection", "held_out"}
    lexicon : bool, default True
        Add the ``better-profanity`` lexicon to the held-out words
        (``False``: the shipped held-out list only).
    """
    words = [w.strip().lower() for w in load_text_dataset("toxic_words", split=split)["word"]]
    if split == "held_out" and lexicon:
        words += profanity_lexicon()
    if split == "held_out":
        selection = set(toxic_words("selection"))
        words = [w for w in words if w not in selection]
    return list(dict.fromkeys(w for w in words if w))


def profanity_lexicon() -> list[str]:
    """The word list that ships with the ``better-profanity`` package (lower case, in its order)."""
    try:
        source = resources.files("better_profanity") / "profanity_wordlist.txt"
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the held-out toxicity lexicon needs `pip install better-profanity`") from err
    return [line.strip().lower() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
