"""CIDEr and keyword counts of captions (hp_mini.experiments.captioning), against hand-computed values."""

from __future__ import annotations

import math

import pytest

from hp_mini.experiments.captioning import caption_evaluator, cider, keyword_rate, tokens

pytest.importorskip("pycocoevalcap")


def test_tokens_lower_case_and_drop_punctuation():
    assert tokens("Two small RED circles, on the left.") == ["two", "small", "red", "circles", "on", "the", "left"]


def test_cider_of_a_hand_computed_example():
    # Two images, one reference each. Unigram "a" is in both references: idf log(2/2) = 0.
    # Image 1: caption = reference -> cosine 1 for 1- and 2-grams, no 3- or 4-grams -> 10 * (1+1+0+0)/4 = 5.
    # Image 2: its only n-gram with weight ("d", "a d") is absent from the reference -> 0.
    score, per = cider(["a b", "a d"], ["a b", "a c"])
    assert per == pytest.approx([5.0, 0.0]) and score == pytest.approx(2.5)


def test_cider_length_penalty_is_gaussian_in_the_length_difference():
    # caption "x y" against reference "x y z" (the other image's reference shares no word):
    # unigrams x, y, z each of idf log 2; cosine 2/sqrt(2*3); bigram "x y" cosine 1/sqrt(1*2);
    # no trigram in the caption; length difference 1 -> factor exp(-1/72).
    score, per = cider(["x y", "p q r"], ["x y z", "p q r"])
    want = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert per[0] == pytest.approx(want, rel=1e-9)
    assert per[1] == pytest.approx(7.5)  # equal to its reference: 1-, 2-, 3-grams cosine 1, no 4-gram


def test_cider_of_captions_equal_to_unique_references_is_ten():
    refs = ["one small red circle on the left", "two large blue squares on the right",
            "three small green triangles on the left", "four large orange stars on the right"]
    score, per = cider(refs, refs)
    # every caption of 7 words has 4-grams; shared n-grams ("on the") weigh 0 and leave the cosines at 1
    assert per == pytest.approx([10.0] * 4) and score == pytest.approx(10.0)


def test_cider_ignores_case_and_punctuation():
    assert cider(["A B."], ["a b"])[0] == pytest.approx(cider(["a b"], ["a b"])[0])


def test_cider_refuses_lists_of_different_lengths():
    with pytest.raises(ValueError, match="same length"):
        cider(["a b"], ["a b", "c d"])
    with pytest.raises(ValueError, match="at least one caption"):
        cider([], [])
    with pytest.raises(TypeError, match="list of captions"):
        cider("a b", ["a b"])


def test_keyword_rate_counts_every_occurrence():
    assert keyword_rate(["red and Red", "blue square", "a circle"], ["red", "blue"]) == pytest.approx(1.0)


def test_keyword_rate_refuses_no_keywords():
    with pytest.raises(ValueError, match="one keyword"):
        keyword_rate(["red"], [])


def test_caption_evaluator_scores_the_captions_of_describe():
    refs = ["one red circle", "two blue squares"]
    captions = [["one red circle", "two squares"]]
    evaluate = caption_evaluator(lambda: captions[0], refs, ["red", "blue"])
    got = evaluate()
    assert got["keywords"] == pytest.approx(0.5) and got["exact"] == pytest.approx(0.5)
    assert got["cider"] == pytest.approx(cider(captions[0], refs)[0])
    assert evaluate.captions == captions[0]


def test_caption_evaluator_refuses_a_wrong_number_of_captions():
    evaluate = caption_evaluator(lambda: ["one"], ["one", "two"], ["one"])
    with pytest.raises(ValueError, match="1 captions for 2 references"):
        evaluate()


def test_one_line_joins_white_space_cuts_long_captions_and_names_empty_ones():
    from hp_mini.experiments.captioning import one_line

    assert one_line("two  red\ncircles") == "two red circles"
    assert one_line("a" * 60, width=10) == "a" * 9 + "\u2026" and len(one_line("b" * 60)) == 48
    assert one_line("") == "(empty)" and one_line("\n\t ") == "(white space only)"
    with pytest.raises(ValueError, match="width must be an int of 2 or more"):
        one_line("x", width=1)
    with pytest.raises(TypeError, match="caption must be a str"):
        one_line(None)
