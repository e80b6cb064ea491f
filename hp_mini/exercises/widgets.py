"""Checkers for the page "Explore heads yourself"."""

from __future__ import annotations

import warnings

from hp_mini.exercises import checker, head_answer


@checker("widgets.country_words_head")
def _check_country_words_head(answer) -> None:
    from hp_mini.pursuit import somp
    from hp_mini.read.dictionary import concept_family
    from hp_mini.viz.widgets import HeadExplorer

    if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
        raise AssertionError("pass a pair: (the head you found, the explorer)")
    head, explorer = answer
    assert isinstance(explorer, HeadExplorer) and explorer.ranking is not None, (
        "the second item must be the page's head explorer, made with ranking= (explorer)"
    )
    acts = explorer.acts
    head = head_answer(head, (max(acts.layers) + 1, acts.n_heads))
    candidates = explorer.ranking.heads[:5]
    assert head in candidates, (
        f"L{head[0]}H{head[1]} is not one of the five best heads of the explorer's ranking: "
        f"{', '.join(f'L{lay}H{h}' for lay, h in candidates)}"
    )
    family = concept_family("countries")
    found = {}
    for h in candidates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a pursuit that stops early still counts
            result = somp(acts.head(*h).float(), explorer.dictionary, n_atoms=explorer.n_atoms, dtype=explorer.dtype)
        found[h] = family.count(result.labels)
    most = max(found.values())
    assert found[head] == most, (
        f"the first {explorer.n_atoms} SOMP atoms of L{head[0]}H{head[1]} hold {found[head]} words of the "
        f"country family, and another of the five heads holds {most}: select each head and count its atoms "
        "with hp_mini.read.dictionary.concept_family('countries').count(...)"
    )
