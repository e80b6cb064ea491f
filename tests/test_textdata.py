import pytest

from hp_mini.textdata import TEXT_DATASETS, data_files, load_text_dataset, profanity_lexicon, qa_prompt, toxic_words


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
    assert not set(load_text_dataset("toxicity", split="selection")["prompt"]) & set(
        load_text_dataset("toxicity", split="evaluation")["prompt"]
    )


def test_errors_and_prompt():
    with pytest.raises(KeyError, match="known"):
        data_files("nope")
    with pytest.raises(KeyError, match="splits"):
        load_text_dataset("qa", split="train")
    assert qa_prompt(" Who? ") == "Q: Who?\nA:"
    assert qa_prompt("Who?", fewshot=True).endswith("Q: Who?\nA:")
    assert qa_prompt("Who?", fewshot=True).startswith("Q: ")
