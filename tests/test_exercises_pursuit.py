import pytest
import torch

from hp_mini.exercises import ExerciseError, check
from hp_mini.pursuit.reference import reference_somp


def test_mp_step_accepts_correct_and_rejects_signed_argmax():
    def good(r, D):
        s = D @ r
        j = int(s.abs().argmax())
        return j, r - s[j] * D[j]

    assert check("pursuit.mp_step", good, quiet=True)

    def signed(r, D):
        s = D @ r
        j = int(s.argmax())
        return j, r - s[j] * D[j]

    with pytest.raises(ExerciseError, match="absolute"):
        check("pursuit.mp_step", signed, quiet=True)


def test_somp_accepts_reference_and_rejects_repeats():
    assert check("pursuit.somp", lambda H, D, k: reference_somp(H, D, k, center=False).atoms, quiet=True)

    def repeats(H, D, k):
        j = int((D @ H.T).abs().sum(1).argmax())
        return [j] * k

    with pytest.raises(ExerciseError, match="chosen twice"):
        check("pursuit.somp", repeats, quiet=True)


def test_evr_rejects_uncentred():
    def good(H, D, atoms):
        Hc = H - H.mean(0)
        A = D[atoms]
        W = torch.linalg.lstsq(A.T, Hc.T).solution.T
        return float(1 - (Hc - W @ A).pow(2).sum() / Hc.pow(2).sum())

    assert check("pursuit.evr", good, quiet=True)

    def uncentred(H, D, atoms):
        A = D[atoms]
        W = torch.linalg.lstsq(A.T, H.T).solution.T
        return float(1 - (H - W @ A).pow(2).sum() / H.pow(2).sum())

    with pytest.raises(ExerciseError, match="uncentred"):
        check("pursuit.evr", uncentred, quiet=True)


def _effective_rank(X):
    Xc = X - X.mean(0)
    power = torch.linalg.svdvals(Xc).pow(2)
    return float(power.sum() ** 2 / power.pow(2).sum())


def test_effective_rank_rejects_singular_values_and_uncentred():
    assert check("pursuit.effective_rank", _effective_rank, quiet=True)

    def plain(X):
        s = torch.linalg.svdvals(X - X.mean(0))
        return float(s.sum() ** 2 / s.pow(2).sum())

    with pytest.raises(ExerciseError, match="squares"):
        check("pursuit.effective_rank", plain, quiet=True)

    def uncentred(X):
        power = torch.linalg.svdvals(X).pow(2)
        return float(power.sum() ** 2 / power.pow(2).sum())

    with pytest.raises(ExerciseError, match="mean over samples"):
        check("pursuit.effective_rank", uncentred, quiet=True)


def test_lowest_rank_layer_is_checked_against_the_activations():
    from hp_mini.record.activations import HeadActivations

    g = torch.Generator().manual_seed(0)
    n, d_head, d_model = 40, 4, 10
    z = torch.randn(n, 3, 2, d_head, generator=g)
    z[:, 1] = torch.randn(n, 1, 1, generator=g) * torch.randn(1, 2, d_head, generator=g)  # rank 1
    W_O = torch.randn(3, 2, d_model, d_head, generator=g)
    acts = HeadActivations(z, W_O, None, [0, 1, 2])
    by_hand = [sum(_effective_rank(acts.head(l, h)) for h in range(2)) for l in range(3)]
    lowest = min(range(3), key=by_hand.__getitem__)
    assert lowest == 1
    assert check("pursuit.lowest_rank_layer", (lowest, acts), quiet=True)
    with pytest.raises(ExerciseError, match="another layer is lower|highest"):
        check("pursuit.lowest_rank_layer", (0, acts), quiet=True)
    with pytest.raises(ExerciseError, match="pair"):
        check("pursuit.lowest_rank_layer", 1, quiet=True)
