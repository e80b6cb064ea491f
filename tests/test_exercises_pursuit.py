import pytest
import torch

from hp_mini.exercises import ExerciseError, check
from hp_mini.reference import reference_somp


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


def test_order_rejects_signed_sum():
    def good(atoms, coefficients):
        return [int(atoms[i]) for i in coefficients.norm(dim=0).argsort(descending=True)]

    assert check("pursuit.order", good, quiet=True)

    def signed(atoms, coefficients):
        return [int(atoms[i]) for i in coefficients.sum(0).argsort(descending=True)]

    with pytest.raises(ExerciseError, match="signed sum"):
        check("pursuit.order", signed, quiet=True)


def test_copy_score_rejects_dot_products():
    def good(acts, layer, head, token_ids, U):
        x = acts.head(layer, head)
        t = torch.stack([U[torch.as_tensor(ids)].mean(0) for ids in token_ids])
        return float(torch.nn.functional.cosine_similarity(x, t, dim=1).mean())

    assert check("pursuit.copy_score", good, quiet=True)

    def dots(acts, layer, head, token_ids, U):
        x = acts.head(layer, head)
        t = torch.stack([U[torch.as_tensor(ids)].mean(0) for ids in token_ids])
        return float((x * t).sum(1).mean())

    with pytest.raises(ExerciseError, match="cosine"):
        check("pursuit.copy_score", dots, quiet=True)
