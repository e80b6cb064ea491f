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


def test_centred_lens_accepts_mean_absolute_logit_and_rejects_the_plain_lens():
    def good(X, atoms, k):
        return ((X - X.mean(0)) @ atoms.T).abs().mean(0).topk(k).indices.tolist()

    assert check("pursuit.centred_lens", good, quiet=True)

    def plain(X, atoms, k):
        return (X.mean(0) @ atoms.T).topk(k).indices.tolist()

    with pytest.raises(ExerciseError, match="centre X"):
        check("pursuit.centred_lens", plain, quiet=True)

    def squared(X, atoms, k):
        return ((X - X.mean(0)) @ atoms.T).pow(2).mean(0).topk(k).indices.tolist()

    with pytest.raises(ExerciseError, match="squared"):
        check("pursuit.centred_lens", squared, quiet=True)

    def reversed_order(X, atoms, k):
        return good(X, atoms, k)[::-1]

    with pytest.raises(ExerciseError, match="largest first"):
        check("pursuit.centred_lens", reversed_order, quiet=True)


def test_projection_drop_is_checked_head_by_head(monkeypatch):
    import hp_mini.exercises.pursuit as checkers
    from hp_mini.pursuit import somp
    from hp_mini.read.dictionary import Dictionary
    from hp_mini.record.activations import HeadActivations

    g = torch.Generator().manual_seed(3)
    n, n_heads, d_head, d_model = 60, 3, 4, 12
    u = torch.randn(d_model, generator=g, dtype=torch.float64)
    u = u / u.norm()
    monkeypatch.setattr(checkers, "mean_token_direction", lambda: u)
    W_O = torch.randn(2, n_heads, d_model, d_head, generator=g)
    W_O[0, 1, :, 0] = 6 * u.float()  # head 1 writes much of its variance along u
    z = torch.randn(n, 2, n_heads, d_head, generator=g)
    acts = HeadActivations(z, W_O, None, [0, 1])
    atoms = torch.randn(3, d_model, generator=g, dtype=torch.float64) + 2 * u  # every atom shares u
    control = Dictionary((atoms / atoms.norm(dim=1, keepdim=True)).float(), [str(i) for i in range(3)])

    def drop(h):
        X = acts.head(0, h).double()
        kept = X - (X @ u)[:, None] * u
        return float(somp(X, control, n_atoms=3).evr[-1] - somp(kept, control, n_atoms=3).evr[-1])

    drops = [drop(h) for h in range(n_heads)]
    best = max(range(n_heads), key=drops.__getitem__)
    assert check("pursuit.projection_drop", ((0, best), acts, control), quiet=True)
    assert check("pursuit.projection_drop", (f"L0H{best}", acts, control), quiet=True)
    other = min(range(n_heads), key=drops.__getitem__)
    with pytest.raises(ExerciseError, match="loses"):
        check("pursuit.projection_drop", ((0, other), acts, control), quiet=True)
    with pytest.raises(ExerciseError, match="not in layer 0"):
        check("pursuit.projection_drop", ((1, best), acts, control), quiet=True)
    with pytest.raises(ExerciseError, match="triple"):
        check("pursuit.projection_drop", (0, best), quiet=True)
