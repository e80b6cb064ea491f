import pytest
import torch

from hp_mini.exercises import ExerciseError, check


def _explorer():
    from hp_mini.rank.ranking import HeadRanking
    from hp_mini.read.dictionary import Dictionary
    from hp_mini.record.activations import HeadActivations
    from hp_mini.viz.widgets import HeadExplorer

    g = torch.Generator().manual_seed(0)
    d_model, d_head, n = 12, 3, 40
    labels = [" France", " Japanese", " Peru", " dog", " cat", " blue", " run", " the", " Paris", " seven",
              " Kenya", " apple"]
    atoms = torch.linalg.qr(torch.randn(d_model, d_model, generator=g)).Q.T  # orthonormal: one atom per direction
    W_O = 0.01 * torch.randn(2, 3, d_model, d_head, generator=g)
    W_O[1, 0] += atoms[[0, 1, 10]].T  # L1H0 writes along three countries
    W_O[1, 1] += atoms[[2, 3, 4]].T  # L1H1 along one country and two animals
    W_O[1, 2] += atoms[[5, 6, 7]].T  # L1H2 along no country
    z = torch.randn(n, 2, 3, d_head, generator=g)
    acts = HeadActivations(z, W_O, None, [0, 1])
    order = [(1, 2), (1, 1), (1, 0), (0, 0), (0, 1)]
    ranking = HeadRanking(order, torch.linspace(1, 0.5, 5), "somp")
    return HeadExplorer(acts, Dictionary(atoms, labels), n_atoms=3, ranking=ranking)


def test_country_words_head_accepts_the_head_with_most_country_words():
    explorer = _explorer()
    assert check("widgets.country_words_head", ((1, 0), explorer), quiet=True)
    assert check("widgets.country_words_head", ("L1H0", explorer), quiet=True)


def test_country_words_head_rejects_a_head_with_fewer():
    explorer = _explorer()
    with pytest.raises(ExerciseError, match="another of the five heads holds 3"):
        check("widgets.country_words_head", ((1, 1), explorer), quiet=True)


def test_country_words_head_outside_the_five_is_refused():
    explorer = _explorer()
    with pytest.raises(ExerciseError, match="not one of the five best"):
        check("widgets.country_words_head", ((0, 2), explorer), quiet=True)
    with pytest.raises(ExerciseError, match="pair"):
        check("widgets.country_words_head", (1, 0, explorer), quiet=True)
