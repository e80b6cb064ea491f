"""Why the post-attention norm matters: per-head writes on the real Gemma-3-270M.

Gemma 3 passes each layer's attention output ``o = sum_h W_O[h] z_h`` through
``post_attention_layernorm`` before adding it to the residual stream, so what a
head adds is ``(1 + w) * W_O[h] z_h / rms(o)``, not the raw piece ``W_O[h] z_h``.
This script measures, on ``--n-prompts`` benchmark prompts (mean pooling):

1. how far the raw pieces are from what is added (per-token cosine of their sum
   with the norm's output, the old pre-norm reading);
2. the relative error of :func:`hp_mini.record_heads`' per-head contributions,
   summed over heads, against the norm's output (per token, every layer);
3. the relative error of ``scale_heads({h: -1})`` against a hand edit of the
   residual, ``out + (alpha - 1) x_h`` with ``x_h`` computed by hand, on the logits
   (and the literal pre-norm scaling of ``z_h``, for contrast);
4. the SOMP top-8 heads for the "countries" concept from the raw pieces (before)
   and from hp_mini's norm-corrected contributions (after), their overlap and the
   Spearman correlation of the two score lists over all heads.

    python benchmarks/gemma3_postnorm.py                 # 48 prompts, about 2 minutes on 1 CPU thread
    python benchmarks/gemma3_postnorm.py --n-prompts 16  # quicker
"""

from __future__ import annotations

import argparse
import time

import torch
from _prompts import prompts as benchmark_prompts

import hp_mini
from hp_mini.record.activations import HeadActivations
from hp_mini.read.dictionary import concept_words, unembedding_dictionary
from hp_mini.rank.ranking import rank_heads


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _trace(model, ids):
    """Per layer: the o_proj input ``z`` [T, H*d] and the norm's output (what is added) [T, d_model]."""
    zs, added, handles = [], [], []
    for layer in model.model.layers:
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: zs.append(a[0][0].detach())))
        norm = layer.post_attention_layernorm
        handles.append(norm.register_forward_hook(lambda m, a, o: added.append(o[0].detach())))
    try:
        with torch.no_grad():
            model(**ids)
    finally:
        for h in handles:
            h.remove()
    return zs, added


def _head_share(layer, z: torch.Tensor, head: int, n_heads: int) -> torch.Tensor:
    o_proj, norm = layer.self_attn.o_proj, layer.post_attention_layernorm
    d = z.shape[-1] // n_heads
    rms = (o_proj(z).float().pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    piece = z[..., head * d:(head + 1) * d] @ o_proj.weight[:, head * d:(head + 1) * d].T
    return piece.float() / rms * (1.0 + norm.weight.float())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-prompts", type=int, default=48)
    parser.add_argument("--n-atoms", type=int, default=50)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--edit-head", default="6,2", help="layer,head of the scale_heads check")
    args = parser.parse_args()

    start = time.perf_counter()
    model, tok = hp_mini.load_model("gemma3-270m")
    texts = benchmark_prompts(args.n_prompts)
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    d_model, d_head = model.config.hidden_size, model.config.head_dim
    print(f"Gemma-3-270M, {len(texts)} prompts, {n_layers} layers x {n_heads} heads (loaded in "
          f"{time.perf_counter() - start:.1f} s)\n")

    # Raw pieces (the old reading) and what each layer really adds, by hand, one prompt at a time.
    acts = hp_mini.record_heads(model, tok, texts, pool="mean", batch_size=8, progress=False)
    z_raw = torch.zeros(len(texts), n_layers, n_heads, d_head)
    cos_by_layer = torch.zeros(n_layers)
    n_tokens = 0
    err_num = err_den = 0.0
    for i, text in enumerate(texts):
        zs, added = _trace(model, tok(text, return_tensors="pt"))
        for layer in range(n_layers):
            z = zs[layer]
            z_raw[i, layer] = z.view(-1, n_heads, d_head).mean(0)
            raw_sum = model.model.layers[layer].self_attn.o_proj(z)
            cos_by_layer[layer] += torch.nn.functional.cosine_similarity(raw_sum, added[layer], dim=-1).sum()
        n_tokens += zs[0].shape[0]
    cos_by_layer /= n_tokens
    # record_heads per token: pool="last" on every prefix would be slow; per-token exactness is
    # the sum over heads of the per-token contributions, checked through a custom pool of one token each.
    for i, text in enumerate(texts[: min(8, len(texts))]):
        ids = tok(text, return_tensors="pt")
        T = ids.input_ids.shape[1]
        masks = [torch.eye(T, dtype=torch.bool)[t] for t in range(T)]
        per_token = hp_mini.record_heads(model, tok, [text] * T, pool=masks, batch_size=T, progress=False)
        summed = per_token.contributions().sum(2)  # [T, layers, d_model]
        _, added = _trace(model, ids)
        want = torch.stack(added, 1)  # [T, layers, d_model]
        err_num += float((summed.double() - want.double()).norm() ** 2)
        err_den += float(want.double().norm() ** 2)
    sum_error = (err_num / err_den) ** 0.5

    # scale_heads(-1) against a hand edit of the residual.
    layer_index, head = (int(x) for x in args.edit_head.split(","))
    layer = model.model.layers[layer_index]
    ids = tok(texts[0], return_tensors="pt")
    seen = {}
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.update(z=a[0].detach())),
        layer.post_attention_layernorm.register_forward_hook(
            lambda m, a, out: out - 2.0 * _head_share(layer, seen["z"], head, n_heads)),
    ]
    with torch.no_grad():
        by_hand = model(**ids).logits
    for h in hooks:
        h.remove()
    with torch.no_grad():
        base = model(**ids).logits
        with hp_mini.scale_heads(model, {(layer_index, head): -1.0}):
            edited = model(**ids).logits
        with hp_mini.scale_heads(model, {(layer_index, head): -1.0}, mode="pre_norm"):
            literal = model(**ids).logits

    print("| measure | value |\n|---|---|")
    print(f"| mean per-token cosine, raw o_proj sum vs what is added (pre-norm reading) | {cos_by_layer.mean():.3f} "
          f"(by layer {cos_by_layer.min():.2f} to {cos_by_layer.max():.2f}) |")
    print(f"| relative error, sum of record_heads' contributions vs post-norm output (per token, 8 prompts) "
          f"| {sum_error:.2e} |")
    print(f"| relative error, pooled sum vs pooled post-norm output ({len(texts)} prompts) | "
          f"{_pooled_error(model, tok, texts, acts):.2e} |")
    print(f"| relative error of scale_heads(L{layer_index}H{head}: -1) vs hand edit, logits | "
          f"{_relative_error(edited, by_hand):.2e} |")
    print(f"| ... of its change (edited - base) vs the hand edit's change | "
          f"{_relative_error(edited - base, by_hand - base):.2e} |")
    print(f"| ... the literal pre-norm scaling (mode='pre_norm') vs the hand edit's change | "
          f"{_relative_error(literal - base, by_hand - base):.2e} |")

    # SOMP rankings for countries, before (raw pieces) and after (norm-corrected).
    dictionary = unembedding_dictionary(model, tok, concept_words("countries"))
    W_raw = torch.stack([
        block.self_attn.o_proj.weight.detach().view(d_model, n_heads, d_head).permute(1, 0, 2)
        for block in model.model.layers
    ])
    before_acts = HeadActivations(z_raw, W_raw, None, list(range(n_layers)), texts=texts)
    before = rank_heads(before_acts, dictionary, n_atoms=args.n_atoms, progress=False)
    after = rank_heads(acts, dictionary, n_atoms=args.n_atoms, progress=False)
    k = args.top
    top_b, top_a = before.top(k), after.top(k)
    comparison = before.compare(after, k=k)
    label = lambda hs: ", ".join(hp_mini.head_label(*h) for h in hs)  # noqa: E731
    print(f"\nSOMP ({args.n_atoms} atoms, {len(dictionary)} country tokens), top {k} heads for countries:")
    print(f"- before (raw o_proj pieces): {label(top_b)}")
    print(f"- after (norm-corrected, record_heads): {label(top_a)}")
    print(f"- shared: {comparison.overlap} of {k}; Spearman over {comparison.n_heads} heads: "
          f"{comparison.spearman:.2f}")
    print(f"\n({time.perf_counter() - start:.0f} s)")


def _pooled_error(model, tok, texts, acts) -> float:
    summed = acts.contributions().sum(2)
    num = den = 0.0
    for i, text in enumerate(texts):
        _, added = _trace(model, tok(text, return_tensors="pt"))
        want = torch.stack([a.mean(0) for a in added])
        num += float((summed[i].double() - want.double()).norm() ** 2)
        den += float(want.double().norm() ** 2)
    return (num / den) ** 0.5


if __name__ == "__main__":
    main()
