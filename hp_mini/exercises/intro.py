"""Checkers for the introduction ("Head Pursuit, by hand")."""

from __future__ import annotations

import torch

from hp_mini.exercises import checker, head_answer
from hp_mini.exercises.heads import direct_head_logits


_VOCAB = ["a", " Paris", " the", " London", " is", "."]
_LOGITS = [0.1, 4.0, 2.5, 1.0, 3.0, -1.0]  # probabilities 0.600, 0.221, 0.134, 0.030, 0.012, 0.004


class _Tokenizer:
    """Decodes ids of ``_VOCAB``, given as an int, a 0-d tensor or a sequence."""

    def decode(self, ids):
        if isinstance(ids, int) or (torch.is_tensor(ids) and ids.ndim == 0):
            ids = [int(ids)]
        return "".join(_VOCAB[int(i)] for i in ids)


@checker("intro.nucleus")
def _check_nucleus(nucleus) -> None:
    logits = torch.tensor(_LOGITS)
    probs = logits.softmax(-1)
    order = probs.argsort(descending=True).tolist()
    for p, n in ((0.5, 1), (0.8, 2), (0.9, 3), (0.99, 5)):
        got = nucleus(logits, _Tokenizer(), p)
        assert isinstance(got, list), f"return a list of (token, probability) pairs, got {type(got).__name__}"
        want = [_VOCAB[i] for i in order[:n]]
        tokens = [t for t, _ in got]
        if tokens == want[:-1]:
            raise AssertionError(
                f"p = {p}: {tokens} adds up to {float(probs[order[: n - 1]].sum()):.3f}, less than p: "
                "keep the token that takes the running total to p"
            )
        if sorted(tokens) == sorted(want) and tokens != want:
            raise AssertionError(f"p = {p}: the right tokens in the wrong order: most likely first")
        assert tokens == want, (
            f"p = {p}: got {tokens}, expected {want}: sort the probabilities, and keep the smallest "
            "prefix whose sum reaches p"
        )
        got_p = torch.tensor([float(q) for _, q in got])
        if torch.allclose(got_p, logits[order[:n]]):
            raise AssertionError("these are logits, not probabilities: apply a softmax over the whole vocabulary first")
        assert torch.allclose(got_p, probs[order[:n]], atol=1e-3), (
            f"p = {p}: probabilities {got_p.tolist()}, expected {probs[order[:n]].tolist()}"
        )


#: The investigation of the introduction: does another capital have its own heads?
PARIS_PROMPT = "The capital of France is"
ROME_PROMPT = "The capital of Italy is"


@checker("intro.capital_head")
def _check_capital_head(answer) -> None:
    assert isinstance(answer, dict) and {"head", "also_paris"} <= set(answer), (
        'return a dict with "head" (the head that pushes " Rome" most) and "also_paris" '
        "(whether it is one of the three heads that push \" Paris\" most)"
    )
    rome = direct_head_logits(ROME_PROMPT, " Rome")
    paris = direct_head_logits(PARIS_PROMPT, " Paris")
    n_heads = rome.shape[1]
    layer, head = head_answer(answer["head"], rome.shape)
    best = divmod(int(rome.flatten().argmax()), n_heads)
    if (layer, head) != best:
        if (layer, head) == divmod(int(paris.flatten().argmax()), n_heads):
            raise AssertionError(
                "that is the head that pushes ' Paris' most on the France prompt: "
                "record the heads again on the Italy prompt and read them at ' Rome'"
            )
        rank = int((rome.flatten() > rome[layer, head]).sum()) + 1
        raise AssertionError(
            f"L{layer}H{head} is number {rank} by its direct logit for ' Rome' on {ROME_PROMPT!r}: "
            "take the head with the largest one"
        )
    top_paris = {divmod(int(i), n_heads) for i in paris.flatten().topk(3).indices}
    expected = best in top_paris
    if bool(answer["also_paris"]) != expected:
        raise AssertionError(
            f"the head is right, but it {'is' if expected else 'is not'} one of the three heads "
            "that push ' Paris' most on the France prompt"
        )
