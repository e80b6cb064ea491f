"""hp_mini.experiments.classification.removal_verdict: the words the image chapters print."""

from __future__ import annotations

import math

import pytest

from hp_mini.experiments.classification import removal_verdict


def test_removal_verdict_says_more_when_the_edit_leaves_less_accuracy():
    assert removal_verdict(0.40, 0.95) == "more than"
    assert removal_verdict(0.95, 0.40) == "less than"


def test_removal_verdict_within_the_tolerance_is_as_much_as():
    assert removal_verdict(0.50, 0.515) == "as much as"
    assert removal_verdict(0.515, 0.50) == "as much as"
    assert removal_verdict(0.50, 0.53) == "more than"  # beyond the default 0.02
    assert removal_verdict(0.50, 0.53, tol=0.05) == "as much as"
    assert removal_verdict(0.50, 0.51, tol=0) == "more than"


def test_removal_verdict_refuses_a_nan_accuracy_or_a_negative_tolerance():
    with pytest.raises(ValueError, match="NaN is no accuracy"):
        removal_verdict(math.nan, 0.9)
    with pytest.raises(ValueError, match="NaN is no accuracy"):
        removal_verdict(0.9, float("nan"))
    with pytest.raises(ValueError, match="tol must be 0 or more"):
        removal_verdict(0.5, 0.6, tol=-0.01)
    with pytest.raises(ValueError, match="tol must be 0 or more"):
        removal_verdict(0.5, 0.6, tol=math.nan)
