"""Recorded runs of the paper's editing experiments, shipped with the package.

``benchmarks/editing_text.py`` runs question answering and toxicity at full
size for one model (about an hour on two CPU cores). Its output for SmolLM2
and Gemma-3-270M ships in ``hp_mini/data/results/``, so that the book can show
the full tables for both models within its build time, and check them against
a live run of part of the experiment. :func:`load_edit_results` reads them.

``benchmarks/vision_edits.py`` runs the paper's MNIST row and captioning edits
on ``smollm2-llava`` and on ``gemma3-llava``; :func:`load_vision_results` reads
their recorded runs (:mod:`hp_mini.experiments.vision_verdicts` reads their
verdicts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hp_mini.experiments.driver import is_random

__all__ = ["EditResults", "VisionResults", "load_edit_results", "load_vision_results", "recorded_models"]

_COLUMNS = ["model", "experiment", "alpha", "method", "k", "draw", "heads", "metric", "value", "baseline",
            "normalised", "ci_low", "ci_high"]
_VISION_COLUMNS = _COLUMNS[:-2]
_KINDS = ("editing", "vision")


def _folder() -> Path:
    return Path(str(resources.files("hp_mini") / "data" / "results"))


def recorded_models(kind: str = "editing") -> list[str]:
    """The models with a recorded run (``<kind>_<model>.json`` in ``hp_mini/data/results``).

    ``kind`` is ``"editing"`` (``benchmarks/editing_text.py``) or ``"vision"``
    (``benchmarks/vision_edits.py``).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {list(_KINDS)}, got {kind!r}")
    folder = _folder()
    if not folder.is_dir():
        return []
    return sorted(p.stem[len(kind) + 1:] for p in folder.glob(f"{kind}_*.json"))


def _recorded_files(kind: str, model, suffixes: dict[str, str], remake: str) -> dict[str, Path]:
    """The files of one recorded run, after checking that they are all there."""
    if not isinstance(model, str):
        raise TypeError(f"model must be a model name (a str), got {type(model).__name__}")
    folder = _folder()
    have = recorded_models(kind)
    if model not in have:
        raise ValueError(f"no recorded {kind} run for {model!r}; recorded: {have}. Make one with {remake}")
    paths = {name: folder / f"{kind}_{model}{suffix}" for name, suffix in suffixes.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise ValueError(f"the recorded {kind} run of {model!r} is incomplete: {missing} missing from {folder}")
    return paths


def _read_table(path: Path, columns: list[str]):
    import pandas as pd

    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if list(table.columns) != columns:
        raise ValueError(f"{path.name} has columns {list(table.columns)}, expected {columns}")
    table["heads"] = table["heads"].fillna("")
    return table


@dataclass(frozen=True)
class EditResults:
    """One model's recorded run of ``benchmarks/editing_text.py``.

    Attributes
    ----------
    model : str
        The model's short name, e.g. ``"smollm2-135m"``.
    table : pandas.DataFrame
        One row per edit and metric, as :func:`hp_mini.experiments.driver.evaluate_head_edits`
        returns them after :func:`hp_mini.experiments.statistics.add_intervals`, with the
        columns ``experiment`` ("qa" or "toxicity") and ``alpha`` added.
    prompts : pandas.DataFrame
        Per-prompt values of the unedited run and of every non-random edit:
        ``experiment``, ``alpha``, ``method``, ``k``, ``prompt`` (the position
        in the evaluation split), ``group`` and ``subgroup`` (QA) and one
        column per metric (``f1``; ``toxic_fraction``, ``toxicity``,
        ``toxic_fraction_pc``, ``lexical``; ``nll``, ``perplexity``).
    meta : dict
        The command, the machine, the versions, and per experiment the split
        sizes, the selections (head labels), the selection words (toxicity),
        the distinct random sets and the random heads moved to nearer layers.
        A recording folded together from several runs has ``parts``
        (:meth:`part`, :meth:`ks`).
    """

    model: str
    table: Any
    prompts: Any
    meta: dict

    def edits(self, experiment: str, alpha: float = -1.0):
        """The rows of one experiment and ``alpha``, ready for :func:`hp_mini.experiments.tables.edit_table`.

        Raises ValueError, naming what was recorded, when there are none.
        """
        rows = self.table[(self.table["experiment"] == experiment) & (self.table["alpha"] == float(alpha))]
        if rows.empty:
            have = sorted({(e, float(a)) for e, a in zip(self.table["experiment"], self.table["alpha"])})
            raise ValueError(f"{self.model}: no recorded rows for experiment={experiment!r}, alpha={alpha:g}; "
                             f"recorded (experiment, alpha): {have}")
        return rows.reset_index(drop=True)

    def ks(self, experiment: str, alpha: float = -1.0) -> list[int]:
        """The head counts ``k`` edited in one experiment at ``alpha``, smallest first."""
        rows = self.edits(experiment, alpha)
        return sorted({int(k) for k in rows.loc[rows["method"] != "unedited", "k"]})

    def part(self, experiment: str, alpha: float = -1.0) -> dict:
        """The run that made one experiment's edits at ``alpha``: its command, date, threads, seconds, settings.

        A recorded run can be folded together from several runs of
        ``benchmarks/editing_text.py`` (its ``--merge``); ``meta["parts"]`` then
        says which made what. Without parts, the whole run made everything.
        """
        self.edits(experiment, alpha)  # raises, naming what was recorded, when there is nothing
        for part in self.meta.get("parts", [self.meta]):
            if "made" not in part or float(alpha) in part["made"].get(experiment, []):
                return part
        raise ValueError(f"{self.model}: meta['parts'] names no run that made experiment={experiment!r}, "
                         f"alpha={alpha:g}")

    def selection(self, experiment: str, method: str, alpha: float | None = None) -> list[tuple[int, int]]:
        """The recorded top heads of one ranking (``"SOMP"``, ``"SOMP specificity"``, ``"logit lens"``).

        As ``(layer, head)``. Give ``alpha`` for the selection that alpha's
        edits used, where a merged run (:meth:`part`) kept an alpha run with
        another selection (``selections_alpha<alpha>`` in ``meta``).
        """
        from hp_mini.model.sites import parse_head_label

        info = self.meta["experiments"].get(experiment, {})
        key = f"selections_alpha{alpha:g}" if alpha is not None else None
        try:
            labels = info[key if key in info else "selections"][method]
        except KeyError:
            raise ValueError(f"{self.model}: no recorded selection for experiment={experiment!r}, "
                             f"method={method!r}") from None
        return [parse_head_label(label) for label in labels]

    def agreement(self, live, experiment: str, alpha: float = -1.0, *, prompts=None, atol: float = 1e-4):
        """Compare a live run of some of the recorded edits with the recording, prompt by prompt.

        Parameters
        ----------
        live : pandas.DataFrame
            A table of :func:`hp_mini.experiments.driver.evaluate_head_edits`, run
            without ``baseline=`` so that it holds the unedited run too, with
            an evaluator that keeps per-prompt values (``attrs["per_prompt"]``).
            Random draws are left out of the comparison.
        experiment : {"qa", "toxicity"}
        alpha : float
            The edits' ``alpha``.
        prompts : sequence of int, optional
            The positions in the recorded evaluation split of the live run's
            prompts, in order (default: all of them).
        atol : float
            Two per-prompt values agree when they differ by at most ``atol``.

        Returns
        -------
        pandas.DataFrame
            One row per live edit and metric: ``method``, ``k``, ``metric``,
            ``prompts``, ``agree`` (prompts whose values agree), ``share``,
            ``live`` and ``recorded`` (the means over these prompts).
        """
        import numpy as np
        import pandas as pd

        per_prompt = getattr(live, "attrs", {}).get("per_prompt")
        if not per_prompt:
            raise ValueError("the live table has no per-prompt values: run evaluate_head_edits with qa_evaluator or "
                             "toxicity_evaluator, whose evaluate.per_prompt it keeps")
        recorded = self.prompts[(self.prompts["experiment"] == experiment) & (self.prompts["alpha"] == float(alpha))]
        if recorded.empty:
            raise ValueError(f"{self.model}: no recorded per-prompt values for experiment={experiment!r}, "
                             f"alpha={alpha:g}")
        n = int((recorded["method"] == "unedited").sum())
        rows = []
        for (method, k, _draw), values in per_prompt.items():
            if is_random(method):  # "random", "random (SOMP specificity)": draws differ from run to run
                continue
            mine = recorded[(recorded["method"] == method) & (recorded["k"] == k)].set_index("prompt")
            if mine.empty:
                raise ValueError(f"{self.model}: the recording has no {method!r} edit with k={k} "
                                 f"({experiment}, alpha={alpha:g})")
            for metric, value in values.items():
                if metric not in mine.columns:
                    continue  # e.g. f1_country, a subset of f1
                value = np.asarray(value, dtype=float)
                where = np.arange(n) if prompts is None else np.asarray(list(prompts), dtype=int)
                if len(where) != len(value):
                    raise ValueError(f"the live run has {len(value)} prompts but prompts= gives {len(where)} "
                                     "positions: give one position per live prompt")
                if len(where) and (where.min() < 0 or where.max() >= n):
                    raise ValueError(f"prompt positions must lie in [0, {n}), the recorded evaluation split")
                theirs = mine[metric].reindex(where).to_numpy(dtype=float)
                agree = int(np.isclose(value, theirs, rtol=0.0, atol=atol).sum())
                rows.append((method, int(k), metric, len(value), agree, agree / max(len(value), 1),
                             float(value.mean()), float(theirs.mean())))
        return pd.DataFrame(rows, columns=["method", "k", "metric", "prompts", "agree", "share", "live", "recorded"])


def load_edit_results(model: str) -> EditResults:
    """Read the recorded run of ``benchmarks/editing_text.py`` for ``model``.

    Parameters
    ----------
    model : str
        A model with a recorded run: see :func:`recorded_models`
        (``"smollm2-135m"``, ``"gemma3-270m"``).

    Returns
    -------
    EditResults

    Raises
    ------
    ValueError
        When ``model`` has no recorded run, or its files are incomplete.
    """
    import pandas as pd

    paths = _recorded_files("editing", model, {"table": ".csv", "prompts": "_prompts.csv", "meta": ".json"},
                            f"`python benchmarks/editing_text.py --model {model} --out DIR` (about an hour on two "
                            f"CPU cores) and read DIR's CSV with pandas")
    table = _read_table(paths["table"], _COLUMNS)
    prompts = pd.read_csv(paths["prompts"])
    meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
    return EditResults(model=model, table=table, prompts=prompts, meta=meta)


@dataclass(frozen=True)
class VisionResults:
    """One model's recorded run of ``benchmarks/vision_edits.py``.

    Attributes
    ----------
    model : str
        ``"smollm2-llava"`` or ``"gemma3-llava"``.
    table : pandas.DataFrame
        One row per edit and metric (as :func:`hp_mini.experiments.driver.evaluate_head_edits`
        returns them, without the bootstrap columns), with ``experiment``
        (``"mnist"``, ``"caption colour"``, ``"caption count"``) and ``alpha``
        (NaN on the unedited rows) added.
    meta : dict
        The command, settings, seconds, threads and versions; per experiment the
        rankings (head labels), the dictionaries, the random bookkeeping and the
        answers or captions of the unedited model and of every non-random edit.
    """

    model: str
    table: Any
    meta: dict

    def edits(self, experiment: str, alpha: float):
        """The unedited rows and the edits at ``alpha`` of one experiment, as one edit table.

        The result reads like a table of :func:`hp_mini.experiments.driver.evaluate_head_edits`
        (for :func:`hp_mini.experiments.classification.edit_summary` and
        :func:`~hp_mini.experiments.classification.paper_comparison`).
        Raises ValueError, naming what was recorded, when there are none.
        """
        mine = self.table[self.table["experiment"] == experiment]
        edited = mine[mine["alpha"] == float(alpha)]
        if edited.empty:
            have = sorted({(e, float(a)) for e, a in zip(self.table["experiment"], self.table["alpha"]) if a == a})
            raise ValueError(f"{self.model}: no recorded rows for experiment={experiment!r}, alpha={alpha:g}; "
                             f"recorded (experiment, alpha): {have}")
        return mine[(mine["method"] == "unedited") | (mine["alpha"] == float(alpha))].reset_index(drop=True)

    def _experiment(self, experiment: str) -> dict:
        experiments = self.meta["experiments"]
        if experiment == "mnist" and "mnist" in experiments:
            return experiments["mnist"]
        concept = experiment.removeprefix("caption ")
        if experiment.startswith("caption ") and concept in experiments.get("caption", {}).get("concepts", {}):
            return experiments["caption"]["concepts"][concept]
        have = (["mnist"] if "mnist" in experiments else []) + \
            [f"caption {c}" for c in experiments.get("caption", {}).get("concepts", {})]
        raise ValueError(f"{self.model}: no recorded experiment {experiment!r}; recorded: {have}")

    def selection(self, experiment: str, method: str) -> list[tuple[int, int]]:
        """The recorded top heads of one ranking of one experiment, as ``(layer, head)``."""
        from hp_mini.model.sites import parse_head_label

        selections = self._experiment(experiment)["selections"]
        if method not in selections:
            raise ValueError(f"{self.model}: no recorded selection {method!r} for {experiment!r}; "
                             f"recorded: {sorted(selections)}")
        return [parse_head_label(label) for label in selections[method]]

    def outputs(self, experiment: str, method: str = "unedited", *, alpha: float | None = None,
                k: int | None = None) -> list[str]:
        """The recorded answers (MNIST) or captions of the unedited model or of one non-random edit."""
        if experiment.startswith("caption "):
            self._experiment(experiment)
            if method == "unedited":
                return list(self.meta["experiments"]["caption"]["unedited"])
        out = self._experiment(experiment)["outputs"]
        key = "unedited" if method == "unedited" else f"{float(alpha):g}|{method}|{k}"
        if key not in out:
            raise ValueError(f"{self.model}: no recorded outputs of {key!r} for {experiment!r}; "
                             f"recorded: {sorted(out)}")
        return list(out[key])


def load_vision_results(model: str = "smollm2-llava") -> VisionResults:
    """Read the recorded run of ``benchmarks/vision_edits.py`` for ``model``.

    Raises
    ------
    ValueError
        When ``model`` has no recorded run, or its files are incomplete or malformed.
    """
    paths = _recorded_files("vision", model, {"table": ".csv", "meta": ".json"},
                            "`python benchmarks/vision_edits.py --model MODEL --threads 1 --out DIR` (about "
                            "an hour on one CPU thread) and read DIR's CSV with pandas")
    table = _read_table(paths["table"], _VISION_COLUMNS)
    meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
    if "experiments" not in meta:
        raise ValueError(f"{paths['meta'].name} has no 'experiments': not a run of benchmarks/vision_edits.py")
    return VisionResults(model=model, table=table, meta=meta)
