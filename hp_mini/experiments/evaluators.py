"""Evaluators for the editing experiments: functions that generate with the model as it is and score the result.

:func:`qa_evaluator` answers questions and scores them against reference answers
(token F1 and exact match, :mod:`hp_mini.experiments.qa`); :func:`toxicity_evaluator`
continues prompts and scores the continuations (the Jigsaw classifier of
:mod:`hp_mini.experiments.toxicity`, a profanity model and a word count,
:mod:`hp_mini.experiments.words`). Either is what
:func:`hp_mini.experiments.driver.evaluate_head_edits` calls inside each edit.

With ``fluency=True`` either also measures how fluent the edited model's
continuations are: :func:`continuation_nll` scores them with the *unedited*
model, which the driver restores before it calls ``evaluate.score_unedited``.

Why the unedited model's perplexity: an edit that damages the model lowers a
concept's F1 or a toxicity rate as surely as one that removes the concept,
so every such score needs a measure of damage beside it. The edited model's
own perplexity cannot be that measure: a broken model can be confident about
the broken text it writes. The unedited model is a fixed judge, the same for
every edit and for the unedited run itself: it finds its own continuations
likely, and text that a damaged model writes (repetitions, lost grammar,
stray tokens) unlikely. A concept-specific edit should leave this perplexity
near the unedited value, as most random edits do; damage raises it. Answers
that change on purpose (another place where a country was) raise it a little
too, so the value reads best beside the random controls of the same size.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import numpy as np
import torch

from hp_mini.checks import check_count
from hp_mini.edit.generation import generate
from hp_mini.edit.tree import beyond_window, tree_log_probs, tree_support
from hp_mini.model.inputs import model_device, tokenizer_of
from hp_mini.experiments.qa import first_answer, token_f1
from hp_mini.experiments.toxicity import toxicity_scores
from hp_mini.experiments.words import profanity_probability, word_pattern

__all__ = ["continuation_nll", "qa_evaluator", "toxicity_evaluator"]

FLUENCY_METRICS = ("nll", "perplexity")
"""The metrics that ``fluency=True`` adds (see :func:`continuation_nll`)."""


def toxicity_evaluator(
    model,
    tokenizer,
    prompts: Sequence[str],
    held_out_words: Sequence[str],
    *,
    threshold: float = 0.5,
    max_new_tokens: int = 20,
    batch_size: int = 64,
    share_prefixes: bool = True,
    second_classifier: bool = True,
    keep_generations: bool = False,
    fluency: bool = False,
) -> Callable[[], dict[str, float]]:
    """A function that continues ``prompts`` greedily and scores the continuations.

    Only the new text is scored. The main classifier is the Jigsaw BiLSTM of
    :mod:`hp_mini.experiments.toxicity` (its ``toxic`` label); ``alt-profanity-check``
    (:func:`profanity_probability`) is the second one, and the held-out words
    give a lexical rate that depends on no classifier.

    Parameters
    ----------
    prompts : list of str
        Openings to continue (e.g. :func:`hp_mini.experiments.textdata.toxicity_prompts`).
    held_out_words : list of str
        Words counted in the continuations; keep them disjoint from the words
        the heads were chosen with.
    threshold : float, default 0.5
        A continuation is toxic when its classifier probability is at least this.
    max_new_tokens, batch_size, share_prefixes
        Passed to :func:`hp_mini.generate`.
    second_classifier : bool, default True
        Also score with ``alt-profanity-check`` (metrics ``*_pc``).
    keep_generations : bool
        Also store the last continuations in ``evaluate.generations``.
    fluency : bool, default False
        Give ``evaluate`` a ``score_unedited()`` that scores the last
        continuations with the model as it is then (unedited: the driver
        calls it after each edit): metrics ``"nll"`` and ``"perplexity"``
        (see :func:`continuation_nll` and the module docstring).

    Returns
    -------
    evaluate : callable ``() -> dict[str, float]``
        Returns ``"toxic_fraction"`` (share of continuations with Jigsaw
        ``toxic`` >= ``threshold``, the paper's count of toxic generations
        divided by their number), ``"toxic_count"`` (that count),
        ``"toxicity"`` (the mean Jigsaw probability), ``"toxic_fraction_pc"``
        and ``"toxic_count_pc"`` (the same with ``alt-profanity-check``),
        ``"lexical"`` (:func:`lexical_rate` of the held-out words, occurrences
        per continuation) and ``"lexical_hits"`` (the number of occurrences).
        After each call ``evaluate.per_prompt`` maps every rate to its
        per-continuation values (for :func:`bootstrap_ratio`).
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("give at least one prompt")
    if not 0 < float(threshold) < 1:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold!r}")
    score = functools.partial(
        _toxicity_scores, pattern=word_pattern(held_out_words), threshold=threshold, second_classifier=second_classifier
    )
    generation = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, share_prefixes=share_prefixes)
    keep = "generations" if keep_generations else None
    return _evaluator(model, tokenizer, prompts, generation, score, keep, fluency)


def _toxicity_scores(outputs: list[str], *, pattern, threshold: float, second_classifier: bool):
    """The scores of :func:`toxicity_evaluator`, their per-continuation values, and the continuations."""
    toxic = np.asarray(toxicity_scores(outputs)[:, 0], dtype=float)
    per_prompt = {
        "toxic_fraction": (toxic >= threshold).astype(float),
        "toxicity": toxic,
        "lexical": np.array([len(pattern.findall(t)) for t in outputs], dtype=float),
    }
    if second_classifier:
        per_prompt["toxic_fraction_pc"] = (profanity_probability(outputs) >= threshold).astype(float)
    result = {name: float(values.mean()) for name, values in per_prompt.items()}
    result["toxic_count"] = float(per_prompt["toxic_fraction"].sum())
    if second_classifier:
        result["toxic_count_pc"] = float(per_prompt["toxic_fraction_pc"].sum())
    result["lexical_hits"] = float(per_prompt["lexical"].sum())
    return result, per_prompt, outputs


def qa_evaluator(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[Sequence[str]],
    groups: Sequence[str] | None = None,
    *,
    prefix: str = "",
    max_new_tokens: int = 6,
    batch_size: int = 128,
    share_prefixes: bool = True,
    keep_predictions: bool = False,
    fluency: bool = False,
) -> Callable[[], dict[str, float]]:
    """A function that answers ``prompts`` greedily and returns the mean F1.

    Each answer is the first line of the greedy continuation
    (:func:`first_answer`). Generation stops for a prompt as soon as that line
    is complete (``stop="\\n"`` in :func:`hp_mini.generate`), and the tokens
    that prompts share (the few-shot prefix, common question openings) are run
    once per call (``share_prefixes``); both give the answers that full-length
    generation gives, only faster.

    Parameters
    ----------
    prompts : list of str
        Completion-style prompts (see :func:`hp_mini.experiments.textdata.qa_prompt`).
    answers : list of list of str
        The reference answers of each prompt.
    groups : list of str or of tuples of str, optional
        A group per prompt (e.g. ``"country"`` / ``"other"``), or the groups
        of each prompt (e.g. ``("other", "geography")``, from
        :func:`hp_mini.experiments.textdata.qa_groups`): the result has one
        mean F1 per group, ``"f1_<group>"``, over the prompts in that group,
        besides ``"f1"`` over all.
    prefix : str, optional
        A text put before every prompt (e.g. the few-shot examples
        :data:`hp_mini.experiments.textdata.QA_FEWSHOT`).
    max_new_tokens, batch_size
        Generation length limit and prompts per batch.
    share_prefixes : bool, default True
        Run shared prompt tokens once (see :func:`hp_mini.generate`).
    keep_predictions : bool
        Also store the last predictions in ``evaluate.predictions``.
    fluency : bool, default False
        Give ``evaluate`` a ``score_unedited()`` that scores the last
        continuations (the whole generated line) with the model as it is then
        (unedited: the driver calls it after each edit): metrics ``"nll"`` and
        ``"perplexity"`` (see :func:`continuation_nll` and the module docstring).

    Returns
    -------
    evaluate : callable ``() -> dict[str, float]``
        Scores the model as it is when called (inside ``scale_heads`` blocks too).
        After each call, ``evaluate.per_prompt`` maps every metric to the
        per-prompt F1 values it is the mean of (the prompts of that group),
        for :func:`bootstrap_ratio`.
    """
    prompts, answers = list(prompts), [list(a) for a in answers]
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answer lists")
    members = None if groups is None else _memberships(groups, len(prompts))
    score = functools.partial(_qa_scores, answers=answers, groups=members)
    generation = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, stop="\n", share_prefixes=share_prefixes)
    asked = [prefix + p for p in prompts]
    return _evaluator(model, tokenizer, asked, generation, score, "predictions" if keep_predictions else None, fluency)


def _memberships(groups, n_prompts: int) -> list[tuple[str, ...]]:
    """The groups of each prompt as a tuple of names (a single name becomes a 1-tuple), checked."""
    if isinstance(groups, str):
        raise TypeError("groups must hold one group (or tuple of groups) per prompt, not one string")
    groups = list(groups)
    if len(groups) != n_prompts:
        raise ValueError(f"{len(groups)} groups for {n_prompts} prompts")
    members = [(g,) if isinstance(g, str) else tuple(g) for g in groups]
    for i, names in enumerate(members):
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"groups[{i}] is {groups[i]!r}: give a group name or a non-empty tuple of names")
    return members


def _qa_scores(outputs: list[str], *, answers: list[list[str]], groups: list[tuple[str, ...]] | None):
    """The mean F1 of :func:`qa_evaluator` (over all and per group), the per-prompt F1 behind it, and the answers."""
    preds = [first_answer(o) for o in outputs]
    f1 = np.array([token_f1(p, a) for p, a in zip(preds, answers)])
    result = {"f1": float(f1.mean())}
    per_prompt = {"f1": f1}
    for name in sorted({n for names in groups or () for n in names}):
        inside = np.array([name in names for names in groups])
        per_prompt[f"f1_{name}"] = f1[inside]
        result[f"f1_{name}"] = float(f1[inside].mean())
    return result, per_prompt, preds


def _evaluator(model, tokenizer, prompts: list[str], generation: dict, score, keep: str | None, fluency: bool):
    """``evaluate()``: continue ``prompts`` greedily with the model as it is now, and ``score`` the continuations.

    ``score(continuations)`` returns the scores, the per-prompt values behind
    them (set as ``evaluate.per_prompt``) and what ``evaluate`` keeps under the
    attribute named ``keep`` (nothing when ``keep`` is None). With ``fluency``,
    ``evaluate.score_unedited()`` scores the last continuations with the model
    as it is when called (:func:`continuation_nll`), adding ``"nll"`` and
    ``"perplexity"`` to ``evaluate.per_prompt``. A continuation scored before
    for the same prompt is not scored again: the scores are remembered per
    (prompt, continuation), since the model is the same unedited model at every
    call (a random or weak edit leaves most continuations as they were).
    """
    last: dict[str, list[str]] = {}
    scored: dict[tuple[int, str], float] = {}

    def evaluate() -> dict[str, float]:
        outputs = generate(model, tokenizer, prompts, **generation)
        last["outputs"] = outputs
        result, per_prompt, kept = score(outputs)
        evaluate.per_prompt = per_prompt  # type: ignore[attr-defined]
        if keep is not None:
            setattr(evaluate, keep, kept)
        return result

    def score_unedited() -> dict[str, float]:
        if "outputs" not in last:
            raise RuntimeError("score_unedited() scores the continuations of the last evaluate(): call evaluate() first")
        outputs = last["outputs"]
        todo = [i for i, c in enumerate(outputs) if (i, c) not in scored]
        if todo:
            fresh = continuation_nll(model, tokenizer, [prompts[i] for i in todo], [outputs[i] for i in todo])
            scored.update({(i, outputs[i]): float(v) for i, v in zip(todo, fresh)})
        nll = np.array([scored[i, c] for i, c in enumerate(outputs)])
        values = {"nll": nll, "perplexity": np.exp(nll)}
        evaluate.per_prompt.update(values)  # type: ignore[attr-defined]
        return {name: float(v.mean()) for name, v in values.items()}

    if fluency:
        evaluate.score_unedited = score_unedited  # type: ignore[attr-defined]
    return evaluate


@torch.no_grad()
def continuation_nll(
    model,
    tokenizer,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    batch_size: int = 64,
) -> np.ndarray:
    """The mean negative log-likelihood per token of each continuation, given its prompt, under ``model``.

    Each prompt is tokenised as :func:`hp_mini.generate` tokenises it and its
    continuation's text is tokenised on its own after it; the value is the
    mean over the continuation's tokens of ``-log p(token | everything before)``,
    in nats. ``exp`` of it is the continuation's perplexity. An empty
    continuation (the model ended at once) is scored as the end-of-sequence
    token it stopped with. Call it with the model unedited to judge the text
    of an edited model (the module docstring says why).

    Parameters
    ----------
    model, tokenizer
        A causal language model and its tokenizer (or processor).
    prompts, continuations : list of str
        The same number of each: the texts the continuations followed, and the continuations.
    batch_size : int, default 64
        Sequences per forward pass. Where the model takes the shared-prefix path
        (:func:`hp_mini.edit.tree.tree_support`), a batch is one prefix tree and
        the tokens its sequences share (a few-shot prefix) run once; otherwise
        sequences are left-padded.

    Returns
    -------
    numpy.ndarray of float, one value per continuation.
    """
    tok = tokenizer_of(tokenizer)
    prompts, continuations = list(prompts), list(continuations)
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    rows = [(tok(p)["input_ids"], _continuation_ids(tok, c)) for p, c in zip(prompts, continuations)]
    if any(not head for head, _ in rows):
        raise ValueError("every prompt needs at least one token for its continuation to be scored after it")
    batch_size = check_count(batch_size, "batch_size")
    support = tree_support(model)
    if support.cache_keyword is not None and beyond_window(model, support, [h + t for h, t in rows], 0) is None:
        order = sorted(range(len(rows)), key=lambda i: rows[i])  # neighbours share the longest prefixes
        out = np.empty(len(rows))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            logps = tree_log_probs(model, [rows[i][0] + rows[i][1] for i in chunk],
                                   [len(rows[i][0]) for i in chunk], support)
            for i, logp in zip(chunk, logps):
                out[i] = -float(logp.mean())
        return out
    return _padded_nll(model, tok, rows, batch_size)


def _padded_nll(model, tok, rows: list[tuple[list[int], list[int]]], batch_size: int) -> np.ndarray:
    """:func:`continuation_nll` for models without the prefix tree: left-padded batches."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    keeps = "logits_to_keep" in inspect.signature(model.forward).parameters
    device = model_device(model)
    out = np.empty(len(rows))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(h) + len(t) for h, t in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (head, tail) in enumerate(chunk):  # left padding: every continuation ends at the last position
            ids[i, width - len(head) - len(tail) :] = torch.tensor(head + tail)
            mask[i, width - len(head) - len(tail) :] = 1
        last = max(len(t) for _, t in chunk) + 1  # the positions whose logits predict a continuation token
        extra = {"logits_to_keep": last} if keeps else {}
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device), **extra).logits[:, -last:]
        for i, (_, tail) in enumerate(chunk):
            steps = logits[i, last - len(tail) - 1 : last - 1].float().log_softmax(-1)
            picked = steps.gather(-1, torch.tensor(tail, device=steps.device)[:, None])
            out[start + i] = -float(picked.mean())
    return out


def _continuation_ids(tok, continuation: str) -> list[int]:
    """The token ids of a continuation on its own; the end-of-sequence token for an empty one."""
    ids = tok(continuation, add_special_tokens=False)["input_ids"] if continuation else []
    if ids:
        return list(ids)
    if tok.eos_token_id is None:
        raise ValueError("an empty continuation is scored as the end-of-sequence token, but the tokenizer has none")
    return [int(tok.eos_token_id)]
