"""The recorded editing runs that ship in hp_mini/data/results, read back and checked for consistency.

The runs themselves take an hour per model (benchmarks/editing_text.py); these
tests check that what ships is complete, that every number in the tidy table
follows from the per-prompt values shipped beside it (means, counts and the
bootstrap intervals, recomputed here), and that the data meet the sizes the
experiment promises (issue: at least 300 QA questions, 50 toxic continuations).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hp_mini import parse_head_label
from hp_mini.experiments.statistics import bootstrap_ratio
from hp_mini.experiments.driver import head_count_sets, head_counts, is_random
from hp_mini.experiments.tables import add_fluency, summarize_edits
from hp_mini.experiments.recorded import EditResults, load_edit_results, recorded_models

MODELS = ["gemma3-270m", "smollm2-135m"]
N_HEADS = {"smollm2-135m": 30 * 9, "gemma3-270m": 18 * 4}


@pytest.fixture(scope="module", params=MODELS)
def run(request) -> EditResults:
    return load_edit_results(request.param)


def test_both_models_are_recorded():
    assert recorded_models() == MODELS


def test_unknown_model_says_how_to_make_one():
    with pytest.raises(ValueError, match=r"benchmarks/editing_text.py --model mistral"):
        load_edit_results("mistral")
    with pytest.raises(TypeError, match="model name"):
        load_edit_results(None)


def test_edits_and_selection_validate(run):
    with pytest.raises(ValueError, match="recorded \\(experiment, alpha\\)"):
        run.edits("toxicity", alpha=5.0)
    with pytest.raises(ValueError, match="no recorded selection"):
        run.selection("qa", "random")


def _made(run) -> list[tuple[str, float]]:
    """Every recorded (experiment, alpha)."""
    return sorted({(e, float(a)) for e, a in zip(run.table["experiment"], run.table["alpha"])})


DRAWS = {"qa": 10, "toxicity": 5}  # random draws per k: toxicity, whose every edit generates, has half


def test_setting_is_the_papers(run):
    meta = run.meta
    assert meta["model"] == run.model
    assert meta["n_heads"] == N_HEADS[run.model]
    assert meta["n_atoms"] == 50 and meta["criterion"] == "l1"
    for experiment, alpha in _made(run):
        part = run.part(experiment, alpha)
        assert part["n_random"] == DRAWS[experiment]
        counts = part.get("head_count_sets", {"1-2-4%": head_counts(N_HEADS[run.model])})
        rule = head_count_sets(N_HEADS[run.model])
        assert counts and all(counts[name] == rule[name] for name in counts)  # each set is the rule's
        assert set(counts) == ({"paper"} if (experiment, run.model) == ("toxicity", "smollm2-135m")
                               else {"1-2-4%"} if "head_count_sets" not in part else set(rule))
        assert run.ks(experiment, alpha) == sorted({k for ks in counts.values() for k in ks}) == part["ks"]
    qa, tox = meta["experiments"]["qa"], meta["experiments"]["toxicity"]
    assert qa["n_evaluation"] >= 300 and qa["groups"]["country"] + qa["groups"]["other"] == qa["n_evaluation"]
    assert tox["n_selection"] + tox["n_evaluation"] == 623
    # the held-out lexicon never contains a selection word (checked when the run was made, kept here)
    assert tox["selection_words"] and len(tox["selection_words"]) == len(set(tox["selection_words"]))


def test_the_parts_made_every_edit_once(run):
    made = [(e, a) for part in run.meta.get("parts", [{"made": dict()}]) for e, alphas in part["made"].items()
            for a in alphas]
    if "parts" in run.meta:
        assert sorted(made) == _made(run) and len(set(made)) == len(made)
    assert ("qa", -1.0) in _made(run) and ("toxicity", -1.0) in _made(run)


def test_table_has_every_edit(run):
    for experiment, alpha in _made(run):
        part = run.part(experiment, alpha)
        rows = run.edits(experiment, alpha)
        metrics = sorted(set(rows["metric"]))
        controls = {"random": "SOMP"} | {f"random ({r})": r for r in part.get("random_like", ["SOMP"])[1:]}
        rankings = ["logit lens", *controls.values()]
        for k in run.ks(experiment, alpha):
            for method in rankings:
                cell = rows[(rows.method == method) & (rows.k == k)]
                assert sorted(cell["metric"]) == metrics and (cell["draw"] == 0).all()
                heads = [parse_head_label(h) for h in cell["heads"].iloc[0].split()]
                assert heads == run.selection(experiment, method, alpha)[:k]
            for control in controls:
                random = rows[(rows.method == control) & (rows.k == k)]
                assert sorted(set(random["draw"])) == list(range(part["n_random"])) == list(range(DRAWS[experiment]))
                for labels in random["heads"]:
                    assert len(labels.split()) == k


def test_normalised_is_value_over_unedited(run):
    t = run.table
    unedited = t[t.method == "unedited"].set_index(["experiment", "alpha", "metric"])["value"]
    for (experiment, alpha, metric), rows in t.groupby(["experiment", "alpha", "metric"]):
        base = unedited[(experiment, alpha, metric)]
        assert np.allclose(rows["baseline"], base)
        if base > 0:
            np.testing.assert_allclose(rows["normalised"], rows["value"] / base, rtol=1e-4)


def _per_prompt(run, experiment, alpha, method, k):
    p = run.prompts
    rows = p[(p.experiment == experiment) & (p.alpha == alpha) & (p.method == method) & (p.k == k)]
    return rows.sort_values("prompt")


def test_values_follow_from_the_per_prompt_values(run):
    """Each single edit's value is the mean (or count) of its shipped per-prompt values."""
    checked = 0
    for (experiment, alpha, method, k), rows in run.table.groupby(["experiment", "alpha", "method", "k"]):
        if is_random(method):
            continue
        prompts = _per_prompt(run, experiment, alpha, method, k)
        assert len(prompts) == run.meta["experiments"][experiment]["n_evaluation"]
        assert list(prompts["prompt"]) == list(range(len(prompts)))
        value = rows.set_index("metric")["value"]
        if experiment == "qa":
            groups = {"country": prompts.group == "country", "other": prompts.group == "other"}
            if "f1_geography" in value:
                groups |= {"geography": prompts.subgroup == "geography",
                           "non_geography": prompts.subgroup == "non_geography"}
                assert (groups["geography"] | groups["non_geography"]).sum() == groups["other"].sum()
            for group, where in groups.items():
                assert value[f"f1_{group}"] == pytest.approx(prompts.loc[where, "f1"].mean(), abs=1e-5)
        else:
            for metric in ("toxic_fraction", "toxicity", "toxic_fraction_pc", "lexical"):
                assert value[metric] == pytest.approx(prompts[metric].mean(), abs=1e-5)
            assert value["toxic_count"] == prompts["toxic_fraction"].sum()
            assert value["lexical_hits"] == pytest.approx(prompts["lexical"].sum(), abs=1e-4)
        for metric in ("nll", "perplexity"):
            if metric in value:
                assert value[metric] == pytest.approx(prompts[metric].mean(), rel=1e-5)
        checked += 1
    rankings = {(e, a): 2 + len(run.part(e, a).get("random_like", ["SOMP"])) - 1 for e, a in _made(run)}
    assert checked == sum(1 + n * len(run.ks(e, a)) for (e, a), n in rankings.items())


def test_fluency_is_the_ratio_of_geometric_mean_probabilities_per_prompt(run):
    """add_fluency against the per-prompt NLLs: exp(mean unedited NLL - mean edited NLL), for every scored edit."""
    checked = 0
    for experiment, alpha in _made(run):
        rows = run.edits(experiment, alpha)
        if "nll" not in set(rows.metric):
            continue
        fluency = add_fluency(rows).query("metric == 'fluency'")
        assert len(fluency) == (rows.metric == "nll").sum()
        base = _per_prompt(run, experiment, alpha, "unedited", 0)["nll"].mean()
        for row in fluency[~fluency.method.map(is_random)].itertuples():
            mine = _per_prompt(run, experiment, alpha, row.method, row.k)["nll"].mean()
            assert row.normalised == pytest.approx(np.exp(base - mine), rel=1e-4)
            assert row.value == row.normalised and np.isnan(row.ci_low) and np.isnan(row.ci_high)
            checked += 1
        unedited = fluency[fluency.method == "unedited"]["normalised"]
        assert unedited.tolist() == [1.0]
    assert checked > 0


def test_add_fluency_refuses_a_table_it_cannot_read(run):
    rows = run.edits("qa")
    with pytest.raises(ValueError, match="call add_fluency once"):
        add_fluency(add_fluency(rows))
    with pytest.raises(ValueError, match="fluency=True"):
        add_fluency(rows[rows.metric != "nll"])
    with pytest.raises(ValueError, match="lacks the columns"):
        add_fluency(rows.drop(columns="baseline"))


def test_intervals_recomputed_from_the_per_prompt_values(run):
    seed = run.meta["seed"]
    for experiment, alpha, metric, column in (("qa", -1.0, "f1_country", "f1"), ("qa", 5.0, "f1_other", "f1"),
                                               ("toxicity", -1.0, "toxic_fraction", "toxic_fraction"),
                                               ("toxicity", -1.0, "lexical", "lexical")):
        unedited = _per_prompt(run, experiment, alpha, "unedited", 0)
        keep = (unedited.group == metric.split("_")[1]).to_numpy() if experiment == "qa" else slice(None)
        for method in ("SOMP", "logit lens"):
            for k in run.ks(experiment, alpha):
                edited = _per_prompt(run, experiment, alpha, method, k)
                low, high = bootstrap_ratio(edited[column].to_numpy()[keep], unedited[column].to_numpy()[keep],
                                            n_boot=2000, seed=seed)
                row = run.table[(run.table.experiment == experiment) & (run.table.alpha == alpha)
                                & (run.table.method == method) & (run.table.k == k) & (run.table.metric == metric)]
                assert row["ci_low"].item() == pytest.approx(low, abs=2e-3)
                assert row["ci_high"].item() == pytest.approx(high, abs=2e-3)
                assert low <= row["normalised"].item() + 1e-6 and row["normalised"].item() <= high + 1e-6


def test_enough_toxic_continuations_unedited(run):
    t = run.edits("toxicity")
    count = t[(t.method == "unedited") & (t.metric == "toxic_count")]["value"].item()
    assert count >= 50, f"{run.model}: only {count:g} toxic continuations unedited"


def test_random_summary_reads_the_draws(run):
    rows = run.edits("qa")
    summary = summarize_edits(rows[rows.method == "random"])
    for k in run.ks("qa"):
        draws = rows[(rows.method == "random") & (rows.k == k) & (rows.metric == "f1_country")]["normalised"]
        assert summary.loc[("f1_country", "random", k), "median"] == pytest.approx(float(np.median(draws)))
    distinct = run.meta["experiments"]["qa"]["distinct_random_alpha-1"]
    for k in run.ks("qa"):
        sets = {" ".join(sorted(h.split())) for h in rows[(rows.method == "random") & (rows.k == k)]["heads"]}
        assert len(sets) == distinct[str(k)]


def test_frames_are_pandas(run):
    assert isinstance(run.table, pd.DataFrame) and isinstance(run.prompts, pd.DataFrame)


def _fake_live(run, experiment, alpha, positions, flip=()):
    """A live table as evaluate_head_edits returns it, built from the recorded per-prompt values."""
    per_prompt = {}
    for method, k in [("unedited", 0), ("SOMP", run.ks(experiment, alpha)[-1])]:
        rows = _per_prompt(run, experiment, alpha, method, k).set_index("prompt").loc[positions]
        column = "f1" if experiment == "qa" else "toxic_fraction"
        values = rows[column].to_numpy().copy()
        if method == "SOMP":
            for i in flip:
                values[i] = 1.0 - values[i] if experiment == "toxicity" else values[i] + 0.5
        per_prompt[(method, k, 0)] = {column: values}
    table = pd.DataFrame({"method": ["unedited"], "k": [0]})
    table.attrs["per_prompt"] = per_prompt
    return table


@pytest.mark.parametrize("experiment", ["qa", "toxicity"])
def test_agreement_counts_the_prompts_that_differ(run, experiment):
    positions = list(range(3, 60, 3))
    same = run.agreement(_fake_live(run, experiment, -1.0, positions), experiment, prompts=positions)
    assert list(same["method"]) == ["unedited", "SOMP"]
    assert (same["agree"] == len(positions)).all() and (same["share"] == 1.0).all()
    assert np.allclose(same["live"], same["recorded"])
    changed = run.agreement(_fake_live(run, experiment, -1.0, positions, flip=(0, 4)), experiment, prompts=positions)
    assert changed.set_index("method").loc["SOMP", "agree"] == len(positions) - 2
    # the positions matter: shifted by one, the same values no longer match the recording everywhere
    shifted = run.agreement(_fake_live(run, experiment, -1.0, positions), experiment,
                            prompts=[p + 1 for p in positions])
    assert shifted["agree"].min() < len(positions)
    # random controls of every kind are left out: their draws are not the recording's
    live = _fake_live(run, experiment, -1.0, positions)
    column = "f1" if experiment == "qa" else "toxic_fraction"
    for method in ("random", "random (layer-matched)", "random (SOMP)"):
        live.attrs["per_prompt"][(method, 4, 0)] = {column: np.full(len(positions), 0.123)}
    assert list(run.agreement(live, experiment, prompts=positions)["method"]) == ["unedited", "SOMP"]


def test_agreement_rejects_bad_input(run):
    live = _fake_live(run, "qa", -1.0, [0, 1, 2])
    with pytest.raises(ValueError, match="one position per live prompt"):
        run.agreement(live, "qa", prompts=[0, 1])
    with pytest.raises(ValueError, match="must lie in"):
        run.agreement(live, "qa", prompts=[0, 1, 10_000])
    with pytest.raises(ValueError, match="no per-prompt values"):
        run.agreement(pd.DataFrame(), "qa")
    with pytest.raises(ValueError, match="no recorded per-prompt"):
        run.agreement(live, "toxicity", alpha=5.0)


# --------------------------------------------------------------------------- #
# The recorded runs of benchmarks/vision_edits.py (smollm2-llava, gemma3-llava)
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module", params=["smollm2-llava", "gemma3-llava"])
def vision_run(request):
    from hp_mini.experiments.recorded import load_vision_results

    return load_vision_results(request.param)


def test_vision_run_is_recorded():
    assert recorded_models("vision") == ["gemma3-llava", "smollm2-llava"]
    with pytest.raises(ValueError, match="kind must be one of"):
        recorded_models("audio")


def test_vision_unknown_model_says_how_to_make_one():
    from hp_mini.experiments.recorded import load_vision_results

    with pytest.raises(ValueError, match=r"benchmarks/vision_edits.py"):
        load_vision_results("shapes-vlm")


def test_vision_edits_read_as_an_edit_table(vision_run):
    from hp_mini.experiments.classification import edit_summary

    table = vision_run.edits("mnist", -1.0)
    assert set(table["method"]) >= {"unedited", "SOMP", "logit lens", "random"}
    edited = table[table["method"] != "unedited"]
    assert np.allclose(edited["normalised"], edited["value"] / edited["baseline"])
    summary = edit_summary(table)
    assert list(summary.index) == vision_run.meta["ks"]
    distinct = vision_run.meta["experiments"]["mnist"]["random"]["-1"]["distinct_random"]
    assert list(summary["random n"]) == [distinct[str(k)] for k in summary.index]
    with pytest.raises(ValueError, match="recorded \\(experiment, alpha\\)"):
        vision_run.edits("mnist", 5.0)


def test_vision_selection_and_outputs_validate(vision_run):
    assert len(vision_run.selection("mnist", "SOMP")) == 32
    with pytest.raises(ValueError, match="no recorded selection"):
        vision_run.selection("mnist", "random")
    with pytest.raises(ValueError, match="no recorded experiment"):
        vision_run.selection("caption shape", "SOMP")
    with pytest.raises(ValueError, match="no recorded outputs"):
        vision_run.outputs("mnist", "random", alpha=-1.0, k=8)


def test_vision_random_sets_are_distinct(vision_run):
    # every edited random set is a different set, n_random of them wherever that many exist
    mnist = vision_run.meta["experiments"]["mnist"]["random"]
    table = vision_run.table
    for alpha, info in mnist.items():
        for k, n in info["distinct_random"].items():
            rows = table[(table["experiment"] == "mnist") & (table["method"] == "random") & (table["alpha"] == float(alpha))
                         & (table["k"] == int(k)) & (table["metric"] == "accuracy")]
            sets = [frozenset(h.split()) for h in rows["heads"]]
            assert len(sets) == len(set(sets)) == n <= vision_run.meta["n_random"]
    if vision_run.model == "smollm2-llava":  # 9 heads a layer: ten distinct sets at every k
        assert all(n == vision_run.meta["n_random"] for a in mnist.values() for n in a["distinct_random"].values())


def test_vision_accuracies_follow_from_the_recorded_answers(vision_run):
    from hp_mini.vision.digits import DIGIT_WORDS

    labels = vision_run.meta["experiments"]["mnist"]["labels"]
    top = max(vision_run.meta["ks"])
    for method, alpha, k in (("unedited", None, None), ("SOMP", -1.0, 8), ("image readers", 0.0, top)):
        answers = vision_run.outputs("mnist", method, alpha=alpha, k=k)
        accuracy = np.mean([a == DIGIT_WORDS[y] for a, y in zip(answers, labels)])
        rows = vision_run.table[(vision_run.table["experiment"] == "mnist") & (vision_run.table["method"] == method)
                                & (vision_run.table["metric"] == "accuracy")]
        if alpha is not None:
            rows = rows[(rows["alpha"] == alpha) & (rows["k"] == k)]
        assert len(rows) == 1 and rows["value"].iloc[0] == pytest.approx(accuracy)


def test_vision_caption_scores_follow_from_the_recorded_captions(vision_run):
    pytest.importorskip("pycocoevalcap")
    from hp_mini.experiments.captioning import cider, keyword_rate
    from hp_mini.experiments.vision import CAPTION_CONCEPTS

    cap = vision_run.meta["experiments"]["caption"]
    assert cider(cap["unedited"], cap["references"])[0] == pytest.approx(cap["concepts"]["colour"]["baseline"]["cider"])
    for concept in ("colour", "count"):
        for alpha, k in cap["edits"]:
            captions = vision_run.outputs(f"caption {concept}", "SOMP", alpha=alpha, k=k)
            rows = vision_run.edits(f"caption {concept}", alpha)
            row = rows[(rows["method"] == "SOMP") & (rows["k"] == k)].set_index("metric")["value"]
            assert row["keywords"] == pytest.approx(keyword_rate(captions, CAPTION_CONCEPTS[concept]))
            assert row["cider"] == pytest.approx(cider(captions, cap["references"])[0])
