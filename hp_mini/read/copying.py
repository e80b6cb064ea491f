"""Copy scores: how much a head's write points at the tokens it attends to.

At each query position, a head writes ``x_t`` while attending to earlier
tokens. Read through the dictionary, the head *copies* when the tokens it
attends to get high logits. :func:`copy_scores` averages that
attention-weighted, standardised logit over positions and prompts, beside a
baseline with random tokens in place of the prompt's (same attention).
Copying heads (induction, name movers) score several units; others near 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hp_mini.checks import check_count, check_prompts, renamed_keywords
from hp_mini.model.heads import attention_heads
from hp_mini.model.hooks import Trace
from hp_mini.model.inputs import encode

__all__ = ["copy_scores", "CopyScores"]


@dataclass(frozen=True)
class CopyScores:
    """How much each head's write points at the tokens it attends to (see :func:`copy_scores`).

    Attributes
    ----------
    scores : Tensor ``[n_layers, n_heads]``
        Mean standardised logit of the attended tokens, float64.
    baseline : Tensor ``[n_layers, n_heads]``
        The same with every prompt token replaced by a random vocabulary token
        (same attention): the level of a head that does not copy.
    n_tokens : int
        Query positions averaged over (all prompts together).
    """

    scores: torch.Tensor
    baseline: torch.Tensor
    n_tokens: int

    def top(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` heads with the highest copy score, best first, as ``(layer, head)``."""
        n_layers, n_heads = self.scores.shape
        if not 0 <= k <= n_layers * n_heads:
            raise ValueError(f"k must be between 0 and {n_layers * n_heads}, got {k}")
        order = self.scores.flatten().argsort(descending=True, stable=True)[:k]
        return [divmod(int(i), n_heads) for i in order]


def _copy_kernel(
    x: torch.Tensor, attn: torch.Tensor, targets: torch.Tensor, mean_atom: torch.Tensor, cov: torch.Tensor
) -> torch.Tensor:
    """Standardised logit of the attended atoms, per query position and head.

    ``x`` ``[T, H, d]`` writes, ``attn`` ``[H, T, T]`` (query, key), ``targets``
    ``[..., T, d]`` the atoms of the key tokens (leading dimensions are
    alternative token sets). Returns ``[..., T, H]``: ``(x . sum_s a_ts u_s -
    x . mean_u) / std_u(x . u)``, the mean and standard deviation taken over the
    dictionary's rows (``cov`` is their covariance).
    """
    spread = ((x @ cov) * x).sum(-1).clamp_min(torch.finfo(x.dtype).tiny).sqrt()
    attended = (attn @ targets.unsqueeze(-3)).transpose(-3, -2)  # [..., T, H, d]
    return ((x * (attended - mean_atom)).sum(-1)) / spread


@renamed_keywords(texts="prompts")
def copy_scores(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    unembedding: torch.Tensor,
    *,
    seed: int = 0,
    batch_size: int = 8,
) -> CopyScores:
    """Score every head by how much its write points at the tokens it attends to.

    At each query position ``t`` (all but a prompt's first), head ``h`` writes
    ``x_t`` to the residual stream while attending to key positions ``s`` with
    weights ``a_ts``. Reading the write with the dictionary (logit ``u_v . x_t``
    for every row ``u_v``), the head *copies* when the tokens it attends to get
    high logits. The score is the attention-weighted logit of the attended
    tokens, standardised over the whole vocabulary,

    ``sum_s a_ts (u_{tok_s} . x_t - mean_v u_v . x_t) / std_v(u_v . x_t)``,

    averaged over query positions and prompts: 0 for a head whose write is
    unrelated to what it attends to, several units for a copying head. The
    baseline repeats the computation with each prompt token replaced by a
    random vocabulary token, keeping the attention.

    Parameters
    ----------
    model : nn.Module
        A causal language model (see :func:`attention_heads`) that can return
        its attention weights (``output_attentions=True``; the eager attention
        is switched on for the call and switched back after).
    tokenizer : tokenizer
        Its tokenizer.
    prompts : list of str
        The prompts (``texts=`` is the old name of this argument, deprecated).
    unembedding : Tensor ``[vocab, d_model]``
        Row ``v`` reads token ``v``, e.g. ``unembedding_dictionary(model,
        tokenizer).atoms`` (unit rows).
    seed : int, default 0
        Seed of the baseline's random tokens.
    batch_size : int, default 8
        Prompts per forward pass.

    Returns
    -------
    CopyScores

    Raises
    ------
    ValueError
        No prompts, an empty prompt or one token only, a ``batch_size``
        below 1, an unembedding of the
        wrong width or with fewer rows than the token ids, or a model that
        returns no attention weights.
    TypeError
        A prompt that is not a string, an unembedding that is not a 2-D
        tensor, or a ``batch_size`` that is not an integer.

    Examples
    --------
    >>> import hp_mini
    >>> model, tokenizer = hp_mini.load_model("smollm2-135m")                 # doctest: +SKIP
    >>> U = hp_mini.unembedding_dictionary(model, tokenizer).atoms              # doctest: +SKIP
    >>> copying = copy_scores(model, tokenizer, prompts, U)                     # doctest: +SKIP
    >>> copying.top(3)                                                          # doctest: +SKIP
    """
    prompts = check_prompts(prompts, "copy_scores")
    if not isinstance(unembedding, torch.Tensor) or unembedding.ndim != 2:
        raise TypeError("unembedding must be a 2-D tensor [vocab, d_model] (row v reads token v)")
    batch_size = check_count(batch_size, "batch_size")
    sites = attention_heads(model)
    U = _checked_unembedding(unembedding, sites[0].d_model)
    with _eager_eval(model):
        totals, count = _copy_totals(model, tokenizer, prompts, sites, U, seed=seed, batch_size=batch_size)
    return CopyScores(totals[0] / count, totals[1] / count, count)


def _copy_totals(model, tokenizer, prompts, sites, U, *, seed: int, batch_size: int):
    """Summed copy scores ``[2, n_layers, n_heads]`` (prompt tokens, random tokens) and the query positions summed."""
    mean_atom = U.mean(0)
    cov = (U - mean_atom).T @ (U - mean_atom) / len(U)
    gen = torch.Generator().manual_seed(seed)
    totals = torch.zeros(2, len(sites), sites[0].n_heads, dtype=torch.float64)
    count = 0
    for start in range(0, len(prompts), batch_size):
        batch, lengths = _encoded(model, tokenizer, prompts[start : start + batch_size], start, len(U))
        writes, attentions = _writes_and_attention(model, sites, batch)
        for j, length in enumerate(lengths):
            tokens = batch["input_ids"][j, :length].cpu()
            targets = torch.stack([U[tokens], U[torch.randint(0, len(U), (length,), generator=gen)]])
            for i, site in enumerate(sites):
                x = site.contributions(writes[i][j, :length]).double().cpu()
                a = attentions[site.layer][j, :, :length, :length].double().cpu()
                z = _copy_kernel(x, a, targets, mean_atom, cov)  # [2, T, H]
                totals[:, i] += z[:, 1:].sum(1)
            count += length - 1
    return totals, count


def _checked_unembedding(unembedding: torch.Tensor, d_model: int) -> torch.Tensor:
    """The unembedding as float64 on the CPU, after checking its width and values."""
    if unembedding.shape[1] != d_model:
        raise ValueError(
            f"the unembedding's rows are {unembedding.shape[1]} wide but the heads write {d_model}-wide vectors"
        )
    if not torch.isfinite(unembedding).all():
        raise ValueError("the unembedding contains NaN or infinite values")
    return unembedding.detach().double().cpu()


@contextlib.contextmanager
def _eager_eval(model: nn.Module):
    """The model in eval mode with eager attention (which returns its weights); both put back after."""
    switch = getattr(model, "set_attn_implementation", None)
    before = getattr(getattr(model, "config", None), "_attn_implementation", None)
    was_training = model.training
    model.eval()
    try:
        if switch is not None and before not in (None, "eager"):
            switch("eager")
        yield
    finally:
        if switch is not None and before not in (None, "eager"):
            switch(before)
        model.train(was_training)


def _encoded(model: nn.Module, tokenizer, chunk: list[str], start: int, n_rows: int):
    """A batch of prompts, right-padded, and each prompt's length; prompts of one token and unknown ids refused."""
    batch = encode(model, tokenizer, chunk, padding_side="right")
    lengths = batch["attention_mask"].sum(1).tolist()
    for j, length in enumerate(lengths):
        if length < 2:
            raise ValueError(
                f"prompt {start + j} has {int(length)} token(s); a copy score needs at least 2 "
                "(the first position can only attend to itself)"
            )
    top = int(batch["input_ids"].max())
    if top >= n_rows:
        raise ValueError(
            f"token id {top} has no row in the unembedding ({n_rows} rows); "
            "pass the unembedding of this model's tokenizer"
        )
    return batch, [int(length) for length in lengths]


def _writes_and_attention(model: nn.Module, sites, batch):
    """Each layer's input to its output projection (the heads' ``z``) and the attention weights, in one pass."""
    traces = [Trace(site.module, retain_input=True) for site in sites]
    with torch.no_grad(), contextlib.ExitStack() as stack:
        for trace in traces:
            stack.enter_context(trace)
        out = model(**batch, output_attentions=True, use_cache=False)
    attentions = getattr(out, "attentions", None)
    if not attentions or attentions[0] is None:
        raise ValueError(
            f"{type(model).__name__} returned no attention weights; copy_scores needs a model "
            "that supports output_attentions=True (eager attention)"
        )
    return [trace.input for trace in traces], attentions
