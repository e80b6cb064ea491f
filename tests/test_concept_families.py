"""The concept families that count a head's top tokens as a concept (hp_mini.read.dictionary.concept_family)."""

from importlib import resources

import pytest

from hp_mini.read.dictionary import concept_family, concept_names, concept_words


def test_country_family_counts_nationality_adjectives_but_not_cities():
    family = concept_family("countries")
    # A top-5 of a nationality head: four nationality adjectives and a city.
    assert family.count([" Japanese", " Albanian", " Spanish", " Indian", " Amsterdam"]) == 4
    assert " Japan" in family and "japan" in family
    assert " Amsterdam" not in family


def test_month_family_counts_abbreviations():
    family = concept_family("months")
    assert family.count(["Feb", " Jul", " September", " Sept", " week"]) == 4
    assert set(concept_words("months")) <= set(family.words)


def test_every_family_holds_its_concept_words():
    for name in concept_names():
        family = concept_family(name)
        assert family.name == name
        assert set(concept_words(name)) <= set(family.words), name
        assert len(set(family.words)) == len(family.words), f"{name}: a word is listed twice"


def test_concept_without_a_family_file_is_its_own_word_list():
    assert concept_family("animals").words == tuple(concept_words("animals"))


def test_family_files_take_in_only_shipped_word_lists():
    folder = resources.files("hp_mini") / "data" / "concepts" / "families"
    files = [p for p in folder.iterdir() if p.name.endswith(".txt")]
    assert files
    for path in files:
        assert path.name[:-4] in concept_names(), f"{path.name} is the family of no shipped concept"
        includes = [line[1:].strip() for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("@")]
        assert includes and all(name in concept_names() for name in includes), (path.name, includes)


def test_unknown_concept_family_is_refused():
    with pytest.raises(ValueError, match="no concept called 'planets'"):
        concept_family("planets")


def test_family_count_of_one_string_is_refused():
    with pytest.raises(TypeError, match="list of tokens"):
        concept_family("months").count(" January")
