"""pursue_heads, rank_heads and random_heads_like on synthetic and recorded heads."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import hp_mini
from hp_mini.record.activations import HeadActivations, HeadMoments


def synthetic_acts(n=40, layers=(0, 1, 2), n_heads=4, d_head=6, d_model=20, v=120, seed=0):
    """Random heads, except L1H2, whose contributions are spanned by atoms 3, 17 and 40."""
    g = torch.Generator().manual_seed(seed)
    D = torch.nn.functional.normalize(torch.randn(v, d_model, generator=g), dim=1)
    W_O = torch.randn(len(layers), n_heads, d_model, d_head, generator=g) / d_model**0.5
    z = torch.randn(n, len(layers), n_heads, d_head, generator=g) + 0.5
    # L1H2 writes only along three atoms: W_O = D[S]^T B
    W_O[1, 2] = D[[3, 17, 40]].T @ torch.randn(3, d_head, generator=g)
    acts = HeadActivations(z, W_O, None, list(layers), None, [f"prompt {i}" for i in range(n)])
    return acts, D


def moments_only(acts: HeadActivations) -> HeadActivations:
    z = acts.z.double()
    m = HeadMoments(z.shape[0], z.sum(0), torch.einsum("nlhk,nlhj->lhkj", z, z))
    return HeadActivations(None, acts.W_O, acts.bias, list(acts.layers), m, list(acts.prompts))


@pytest.mark.filterwarnings("ignore:L1H2. the residual is zero after 3 atoms")
@pytest.mark.parametrize("criterion", ["l1", "l2"])
@pytest.mark.parametrize("batch_heads", [1, 5, 90])
def test_pursue_heads_equals_somp_on_each_head(criterion, batch_heads):
    acts, D = synthetic_acts()
    results = hp_mini.pursue_heads(acts, D, n_atoms=5, criterion=criterion, batch_heads=batch_heads, progress=False)
    assert list(results) == acts.heads
    assert len(results[(1, 2)]) == 3  # its residual is zero after its three atoms
    for (layer, head), r in results.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = hp_mini.somp(acts.head(layer, head), D, n_atoms=5, criterion=criterion)
        assert r.atoms.tolist() == expected.atoms.tolist(), (layer, head)
        torch.testing.assert_close(r.evr, expected.evr, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r.coefficients, expected.coefficients, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r.mean, expected.mean, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:L1H2. the residual is zero after 3 atoms")
def test_moments_only_gives_the_same_l2_pursuit():
    acts, D = synthetic_acts(seed=1)
    full = hp_mini.pursue_heads(acts, D, n_atoms=6, criterion="l2", progress=False)
    light = hp_mini.pursue_heads(moments_only(acts), D, n_atoms=6, criterion="l2", progress=False)
    for h in acts.heads:
        assert full[h].atoms.tolist() == light[h].atoms.tolist()
        torch.testing.assert_close(full[h].evr, light[h].evr)
        torch.testing.assert_close(full[h].coefficient_norms, light[h].coefficient_norms, rtol=1e-4, atol=1e-5)
        assert light[h].coefficients is None
    with pytest.raises(ValueError, match="store='moments'"):
        hp_mini.pursue_heads(moments_only(acts), D, n_atoms=3, criterion="l1", progress=False)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_rank_heads_finds_the_planted_head(criterion):
    acts, D = synthetic_acts(seed=2)
    ranking = hp_mini.rank_heads(acts, D, n_atoms=3, criterion=criterion, progress=False)
    assert ranking.heads[0] == (1, 2)
    assert float(ranking.scores[0]) == pytest.approx(1.0, abs=1e-5)
    assert sorted(ranking.results[(1, 2)].atoms.tolist()) == [3, 17, 40]
    assert (ranking.scores.diff() <= 0).all()
    assert sorted(ranking.heads) == sorted(acts.heads)
    frame = ranking.to_frame()
    assert frame["head"].iloc[0] == "L1H2"
    assert list(frame.columns) == ["head", "layer", "index", "score", "atoms"]
    assert ranking.top(2) == ranking.heads[:2]


def test_rank_heads_logit_lens_is_the_mean_logit():
    acts, D = synthetic_acts(seed=3)
    ranking = hp_mini.rank_heads(acts, D, method="logit_lens")
    for (layer, head), score in zip(ranking.heads, ranking.scores):
        expected = (acts.head(layer, head) @ D.T).mean()
        assert float(score) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    light = hp_mini.rank_heads(moments_only(acts), D, method="logit_lens")
    assert light.heads == ranking.heads
    with pytest.raises(ValueError, match="method"):
        hp_mini.rank_heads(acts, D, method="tuned_lens")


def test_mismatched_width_and_too_many_atoms():
    acts, D = synthetic_acts()
    with pytest.raises(ValueError, match="wide"):
        hp_mini.pursue_heads(acts, D[:, :10], progress=False)
    with pytest.raises(ValueError, match="more than"):
        hp_mini.pursue_heads(acts, D[:4], n_atoms=5, progress=False)
    with pytest.warns(RuntimeWarning, match="using 4"):
        hp_mini.rank_heads(acts, D[:4], n_atoms=5, progress=False)


def test_dead_head_warns_and_scores_zero():
    acts, D = synthetic_acts(seed=4)
    acts.z[:, 0, 1] = 0.7  # constant output: zero variance
    with pytest.warns(RuntimeWarning, match="L0H1 has zero variance"):
        ranking = hp_mini.rank_heads(acts, D, n_atoms=3, progress=False)
    assert ranking.heads[-1] == (0, 1) and float(ranking.scores[-1]) == 0.0


METHODS = ["somp", "logit_lens"]


def _rank(acts, D, method):
    return hp_mini.rank_heads(acts, D, method=method, n_atoms=3, progress=False)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [0, 1])
def test_rank_heads_needs_at_least_two_prompts(method, n):
    acts, D = synthetic_acts()
    few = HeadActivations(acts.z[:n], acts.W_O, None, list(acts.layers), None, list(acts.prompts[:n]))
    with pytest.raises(ValueError, match=f"at least 2 prompts, got {n}"):
        _rank(few, D, method)
    with pytest.raises(ValueError, match=f"at least 2 prompts, got {n}"):
        _rank(moments_only(few), D, method)


@pytest.mark.parametrize("method", METHODS)
def test_rank_heads_rejects_an_empty_dictionary(method):
    acts, D = synthetic_acts()
    with pytest.raises(ValueError, match="the dictionary is empty"):
        _rank(acts, D[:0], method)
    empty = hp_mini.Dictionary(D[:0], [], words=["Atlantis"], missing=["Atlantis"])
    with pytest.raises(ValueError, match="dictionary.missing"):
        _rank(acts, empty, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_rank_heads_rejects_non_finite_activations(method, value):
    acts, D = synthetic_acts()
    acts.z[7, 2, 1, 3] = value
    with pytest.raises(ValueError, match=r"head outputs \(acts.z\) contain 1 NaN or infinite"):
        _rank(acts, D, method)
    acts, D = synthetic_acts()
    acts.W_O[0, 3, 5, 2] = value
    with pytest.raises(ValueError, match=r"output projections \(acts.W_O\) contain 1 NaN or infinite"):
        _rank(acts, D, method)


@pytest.mark.parametrize("method", METHODS)
def test_rank_heads_rejects_non_finite_moments(method):
    acts, D = synthetic_acts()
    light = moments_only(acts)
    light.moments.second[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"moments \(acts.moments.second\) contain 1 NaN"):
        hp_mini.rank_heads(light, D, method=method, criterion="l2", n_atoms=3, progress=False)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_rank_heads_rejects_a_non_finite_dictionary(method, value):
    acts, D = synthetic_acts()
    D = D.clone()
    D[11, 4] = value
    with pytest.raises(ValueError, match="dictionary's atoms contain 1 NaN or infinite"):
        _rank(acts, D, method)
    with pytest.raises(ValueError, match="the dictionary contains 1 NaN or infinite"):
        hp_mini.pursue_heads(acts, D, n_atoms=3, progress=False)


@pytest.mark.parametrize("k", [np.int64(3), torch.tensor(3)])
def test_rank_heads_accepts_numpy_and_torch_integers(k):
    acts, D = synthetic_acts(seed=2)
    assert hp_mini.rank_heads(acts, D, n_atoms=k, progress=False).heads == _rank(acts, D, "somp").heads


def test_random_heads_like():
    pool = [(layer, head) for layer in range(4) for head in range(5)]
    selected = [(0, 1), (0, 3), (2, 2), (3, 0), (3, 4)]
    draws = hp_mini.random_heads_like(selected, pool, n_draws=10, seed=7)
    assert len(draws) == 10
    for d in draws:
        assert len(d) == len(selected) and len(set(d)) == len(d)
        assert not set(d) & set(selected)
        counts = {layer: sum(1 for l, _ in d if l == layer) for layer in range(4)}
        assert counts == {0: 2, 1: 0, 2: 1, 3: 2}
    assert len({tuple(d) for d in draws}) > 1
    assert draws == hp_mini.random_heads_like(selected, pool, n_draws=10, seed=7)
    assert draws != hp_mini.random_heads_like(selected, pool, n_draws=10, seed=8)
    acts, _ = synthetic_acts()
    assert all(h in acts.heads for d in hp_mini.random_heads_like([(1, 2)], acts, n_draws=3) for h in d)
    with pytest.raises(ValueError, match="only 1 others"):
        hp_mini.random_heads_like([(0, 0), (0, 1), (0, 2), (0, 3)], pool)
    with pytest.raises(ValueError, match="not among"):
        hp_mini.random_heads_like([(9, 0)], pool)


@pytest.mark.slow
def test_smollm2_rank_heads_runs_from_moments(smollm2_heads, smollm2):
    model, tok = smollm2
    months = hp_mini.unembedding_dictionary(model, tok, hp_mini.concept_words("months"))
    acts = smollm2_heads
    full = hp_mini.rank_heads(acts, months, n_atoms=10, criterion="l2", progress=False)
    light = hp_mini.rank_heads(moments_only(acts), months, n_atoms=10, criterion="l2", progress=False)
    assert full.heads == light.heads
    torch.testing.assert_close(full.scores, light.scores, rtol=1e-5, atol=1e-6)
    assert len(full.heads) == 270 and full.to_frame()["head"].str.match(r"L\d+H\d$").all()


@pytest.mark.filterwarnings("ignore:L1H2. the residual is zero after 3 atoms")
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_float64_output_keeps_the_evr_to_double_precision(criterion):
    acts, D = synthetic_acts(seed=5)
    results = hp_mini.pursue_heads(acts, D, n_atoms=4, criterion=criterion, out_dtype=torch.float64, progress=False)
    for (layer, head), r in results.items():
        assert r.evr.dtype == torch.float64
        # independent oracle: the share of the centred signals' energy that the chosen atoms span
        Z, W = acts.factors(layer, head)
        X = Z.double() @ W.double().T
        Xc = X - X.mean(0)
        A = D[r.atoms].double().T
        fit = A @ torch.linalg.lstsq(A, Xc.T).solution
        evr = 1 - ((Xc.T - fit) ** 2).sum() / (Xc**2).sum()
        assert abs(float(r.evr[-1]) - float(evr)) < 1e-12, (layer, head)
    ranking = hp_mini.rank_heads(acts, D, n_atoms=4, criterion=criterion, out_dtype=torch.float64, progress=False)
    assert ranking.scores.dtype == torch.float64
    assert ranking.scores.tolist() == sorted((float(r.evr[-1]) for r in results.values()), reverse=True)
    assert [float(results[h].evr[-1]) for h in ranking.heads] == ranking.scores.tolist()


def test_check_ranking_inputs_checks_and_caps_n_atoms():
    acts, D = synthetic_acts()
    dic, n = hp_mini.rank.ranking.check_ranking_inputs(acts, D, n_atoms=7)
    assert n == 7 and torch.equal(dic.atoms, D)
    with pytest.warns(RuntimeWarning, match="using 120"):
        assert hp_mini.rank.ranking.check_ranking_inputs(acts, D, n_atoms=500)[1] == 120
    with pytest.raises(ValueError, match="n_atoms must be at least 1, got 0"):
        hp_mini.rank.ranking.check_ranking_inputs(acts, D, n_atoms=0)
    with pytest.raises(TypeError, match="n_atoms must be an integer"):
        hp_mini.rank.ranking.check_ranking_inputs(acts, D, n_atoms=2.0)
    with pytest.raises(ValueError, match="at least 2 prompts, got 1"):
        hp_mini.rank.ranking.check_ranking_inputs(acts.select(slice(0, 1)), D)


# --------------------------------------------------------------------------- #
# HeadRanking.compare
# --------------------------------------------------------------------------- #


def _ranking(scores: dict, method: str = "somp") -> hp_mini.HeadRanking:
    heads = sorted(scores, key=lambda h: -scores[h])
    return hp_mini.HeadRanking(heads, torch.tensor([scores[h] for h in heads]), method)


def test_compare_matches_scipy_and_a_hand_count():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    heads = [(layer, head) for layer in range(5) for head in range(6)]
    a = {h: float(v) for h, v in zip(heads, rng.normal(size=len(heads)))}
    b = {h: a[h] + float(v) for h, v in zip(heads, rng.normal(size=len(heads)))}
    b[(4, 5)] = b[(4, 4)]  # a tie: scipy gives tied values their average rank
    ra, rb = _ranking(a), _ranking(b, "logit_lens")
    got = ra.compare(rb, k=7)
    expected = spearmanr([a[h] for h in heads], [b[h] for h in heads]).statistic
    assert got.spearman == pytest.approx(expected, abs=1e-12)
    top_a = sorted(heads, key=lambda h: -a[h])[:7]
    top_b = sorted(heads, key=lambda h: -b[h])[:7]
    both = set(top_a) & set(top_b)
    assert got.shared == sorted(both) and got.overlap == len(both)
    assert got.jaccard == pytest.approx(len(both) / len(set(top_a) | set(top_b)))
    assert got.chance_jaccard == pytest.approx(7 / (2 * 30 - 7))
    # Symmetric, and restricted to some layers it compares only their heads.
    back = rb.compare(ra, k=7)
    assert back.spearman == pytest.approx(got.spearman) and back.shared == got.shared
    later = ra.compare(rb, k=3, layers=[2, 3, 4])
    kept = [h for h in heads if h[0] >= 2]
    assert later.n_heads == len(kept)
    assert later.spearman == pytest.approx(spearmanr([a[h] for h in kept], [b[h] for h in kept]).statistic)
    assert later.top_a == [h for h in sorted(heads, key=lambda h: -a[h]) if h[0] >= 2][:3]
    assert " in common (" in str(later)


def test_compare_of_a_ranking_with_itself_and_its_reverse():
    heads = [(0, h) for h in range(6)]
    ra = _ranking({h: float(6 - h[1]) for h in heads})
    rev = _ranking({h: float(h[1]) for h in heads})
    same = ra.compare(ra, k=3)
    assert (same.spearman, same.jaccard, same.overlap) == (pytest.approx(1.0), 1.0, 3)
    opposite = ra.compare(rev, k=3)
    assert (opposite.spearman, opposite.jaccard, opposite.overlap) == (pytest.approx(-1.0), 0.0, 0)


def test_compare_rejects_bad_input():
    ra = _ranking({(0, 0): 1.0, (0, 1): 2.0, (1, 0): 3.0})
    with pytest.raises(ValueError, match="different heads"):
        ra.compare(_ranking({(0, 0): 1.0, (0, 1): 2.0, (2, 0): 3.0}), k=1)
    with pytest.raises(ValueError, match="between 1 and 3"):
        ra.compare(ra, k=4)
    with pytest.raises(TypeError, match="integer"):
        ra.compare(ra, k=1.5)
    with pytest.raises(TypeError, match="HeadRanking"):
        ra.compare([(0, 0)], k=1)
    with pytest.raises(ValueError, match="at least 2"):
        ra.compare(ra, k=1, layers=[1])


def test_grid_places_every_score_at_its_head():
    from hp_mini.rank.ranking import HeadRanking

    heads = [(2, 1), (0, 3), (1, 0), (2, 0)]
    scores = torch.tensor([0.9, 0.5, 0.25, 0.125], dtype=torch.float64)
    ranking = HeadRanking(heads, scores, "somp")
    grid = ranking.grid(3, 4)
    want = torch.zeros(3, 4)
    for (layer, head), s in zip(heads, scores.tolist()):  # the loop the chapters used to write
        want[layer, head] = s
    assert grid.dtype == torch.float32 and torch.equal(grid, want)
    assert ranking.grid().shape == (3, 4)
    assert ranking.grid(dtype=torch.float64)[2, 1].item() == 0.9
    with pytest.raises(ValueError, match="outside a 2 x 4 grid"):
        ranking.grid(2, 4)
    assert HeadRanking([], torch.zeros(0), "somp").grid(2, 2).abs().sum() == 0


def test_skip_layers_leaves_the_first_layers_out_in_order():
    acts, D = synthetic_acts()
    ranking = hp_mini.rank_heads(acts, D, n_atoms=3, progress=False)
    later = ranking.skip_layers(1)
    want = [(i, h) for i, h in enumerate(ranking.heads) if h[0] >= 1]
    assert later.heads == [h for _, h in want] and len(later) == 8
    assert torch.equal(later.scores, ranking.scores[[i for i, _ in want]])
    assert later.method == "somp" and list(later.results) == later.heads
    assert later.top(3) == [h for h in ranking.heads if h[0] >= 1][:3]
    assert ranking.skip_layers(0).heads == ranking.heads
    assert len(ranking.skip_layers(np.int64(3))) == 0  # past the last layer: no heads
    lens = hp_mini.rank_heads(acts, D, method="logit_lens", progress=False)
    assert lens.skip_layers(2).results is None and {h[0] for h in lens.skip_layers(2).heads} == {2}


def test_skip_layers_rejects_a_negative_or_non_integer_count():
    acts, D = synthetic_acts()
    ranking = hp_mini.rank_heads(acts, D, method="logit_lens", progress=False)
    with pytest.raises(ValueError, match="n_layers must be at least 0"):
        ranking.skip_layers(-1)
    for bad in (1.0, True, "1"):
        with pytest.raises(TypeError, match="n_layers must be an integer"):
            ranking.skip_layers(bad)


def test_evr_grid_is_the_evr_of_each_head_at_its_layer_and_head():
    from hp_mini.rank.ranking import evr_grid

    acts, D = synthetic_acts()
    grid = evr_grid(acts, D, n_atoms=3, criterion="l2", progress=False)
    ranking = hp_mini.rank_heads(acts, D, n_atoms=3, criterion="l2", progress=False)
    want = torch.zeros(3, 4)
    for (layer, head), result in ranking.results.items():
        want[layer, head] = float(result.evr[-1])
    assert grid.shape == (3, 4) and torch.equal(grid, want)
    assert grid[1, 2] == grid.max() and grid[1, 2] > 0.99  # the planted head


def test_evr_grid_keeps_rows_for_layers_not_recorded():
    from hp_mini.rank.ranking import evr_grid

    acts, D = synthetic_acts(layers=(0, 2))
    grid = evr_grid(acts, D, n_atoms=3, progress=False)
    assert grid.shape == (3, 4)
    assert grid[1].abs().sum() == 0 and (grid[0] > 0).all() and (grid[2] > 0).all()


def test_evr_grid_warns_at_the_caller_when_n_atoms_is_capped():
    from hp_mini.rank.ranking import evr_grid

    acts, D = synthetic_acts()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grid = evr_grid(acts, D[:5], n_atoms=8, progress=False)
    capped = [w for w in caught if "more than the 5 atoms" in str(w.message)]
    assert len(capped) == 1 and capped[0].filename == __file__
    assert torch.equal(grid, evr_grid(acts, D[:5], n_atoms=5, progress=False))
    with pytest.raises(ValueError, match="wide"):
        evr_grid(acts, D[:, :10], n_atoms=3, progress=False)


@pytest.mark.filterwarnings("ignore:L1H2. the residual is zero after 3 atoms")
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_specificity_is_the_concept_evr_minus_the_control_evr_head_by_head(criterion):
    acts, D = synthetic_acts(seed=4)
    concept, control = D[[3, 17, 40, 5, 9, 60]], D[[70, 71, 72, 73, 74, 75]]
    ranking = hp_mini.rank_heads(acts, concept, method="specificity", control=control, n_atoms=4,
                                 criterion=criterion, progress=False)
    assert ranking.method == "specificity" and sorted(ranking.heads) == sorted(acts.heads)
    # oracle: one somp call per head and dictionary, subtracted by hand
    for (layer, head), score in zip(ranking.heads, ranking.scores):
        x = acts.head(layer, head)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = hp_mini.somp(x, concept, n_atoms=4, criterion=criterion).evr[-1]
            b = hp_mini.somp(x, control, n_atoms=4, criterion=criterion).evr[-1]
        assert float(score) == pytest.approx(float(a - b), abs=1e-5), (layer, head)
    assert ranking.heads[0] == (1, 2)  # the planted head is what the concept explains and the control does not
    assert (ranking.scores.diff() <= 0).all()


def test_specificity_needs_a_control_of_the_same_size_and_only_there():
    acts, D = synthetic_acts(seed=5)
    with pytest.raises(ValueError, match="needs control="):
        hp_mini.rank_heads(acts, D[:6], method="specificity", n_atoms=3, progress=False)
    with pytest.raises(ValueError, match="control has 5 atoms and the dictionary 6"):
        hp_mini.rank_heads(acts, D[:6], method="specificity", control=D[10:15], n_atoms=3, progress=False)
    with pytest.raises(ValueError, match="only used by method='specificity'"):
        hp_mini.rank_heads(acts, D[:6], control=D[10:16], n_atoms=3, progress=False)
    with pytest.raises(ValueError, match="control: the dictionary's atoms are 7 wide"):
        hp_mini.rank_heads(acts, D[:6], method="specificity", control=torch.randn(6, 7), n_atoms=3, progress=False)
