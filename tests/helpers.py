"""Shared test helpers: tiny random models of every declared family, a character
tokenizer, and exactness checks written independently of hp_mini's own
architecture declarations (each family's facts are restated here by hand)."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

import hp_mini

# --------------------------------------------------------------------------- #
# Tiny models, built from configs (nothing is downloaded)
# --------------------------------------------------------------------------- #

_COMMON = dict(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
               patch_size=8)


def _tiny_config(arch: str):
    import transformers as tf

    kv = dict(num_attention_heads=4, num_key_value_heads=2)
    if arch == "llama":  # grouped-query attention, as in SmolLM2
        return tf.LlamaConfig(**_COMMON, num_attention_heads=6, num_key_value_heads=2)
    if arch == "mistral":
        return tf.MistralConfig(**_COMMON, **kv)
    if arch == "qwen2":
        return tf.Qwen2Config(**_COMMON, **kv)
    if arch == "qwen3":
        return tf.Qwen3Config(**_COMMON, **kv, head_dim=16)
    if arch == "gemma":
        return tf.GemmaConfig(**_COMMON, num_attention_heads=4, num_key_value_heads=1, head_dim=16)
    if arch == "gemma2":  # with an attention bias, so the bias's share passes through the post-norm
        return tf.Gemma2Config(**_COMMON, **kv, head_dim=16, attention_bias=True)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(**_COMMON, num_attention_heads=4, num_key_value_heads=1, head_dim=16)
    if arch == "olmo2":
        return tf.Olmo2Config(**_COMMON, **kv, attention_bias=True)
    if arch == "granite":
        return tf.GraniteConfig(**_COMMON, **kv, residual_multiplier=0.22, logits_scaling=4.0,
                                embedding_multiplier=3.0, attention_multiplier=0.3, attention_bias=True)
    if arch == "phi3":
        return tf.Phi3Config(**_COMMON, num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=97, n_embd=48, n_layer=2, n_head=4, n_positions=64)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(**_COMMON, num_attention_heads=4, use_parallel_residual=True)
    if arch == "gpt_neox_sequential":
        return tf.GPTNeoXConfig(**_COMMON, num_attention_heads=4, use_parallel_residual=False)
    # vision-language wrappers: only their language model is exercised
    text = dict(**_COMMON, **kv)
    mrope = dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]})
    if arch == "llava":
        return tf.LlavaConfig(text_config=tf.LlamaConfig(**text).to_dict(),
                              vision_config=tf.CLIPVisionConfig(**_VISION).to_dict(), image_token_index=96)
    if arch == "llava_next":
        return tf.LlavaNextConfig(text_config=tf.LlamaConfig(**text).to_dict(),
                                  vision_config=tf.CLIPVisionConfig(**_VISION).to_dict(), image_token_index=96)
    if arch == "qwen2_vl":
        return tf.Qwen2VLConfig(text_config={**text, **mrope}, vision_config=dict(depth=1, embed_dim=32, hidden_size=48, num_heads=2))
    if arch == "qwen2_5_vl":
        return tf.Qwen2_5_VLConfig(text_config={**text, **mrope}, vision_config=dict(depth=1, hidden_size=32, out_hidden_size=48,
                                                                       num_heads=2, intermediate_size=64))
    if arch == "gemma3":
        return tf.Gemma3Config(text_config=dict(**text, head_dim=16), vision_config=dict(**_VISION))
    if arch == "idefics3":
        return tf.Idefics3Config(text_config=dict(model_type="llama", **text), vision_config=dict(**_VISION))
    raise KeyError(arch)


TEXT_ARCHITECTURES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox"]
MULTIMODAL = ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "gemma3", "idefics3"]


def tiny_model(arch: str, seed: int = 0):
    """A tiny random model of architecture ``arch`` in eval mode, float32, eager attention."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    torch.manual_seed(seed)
    config = _tiny_config(arch)
    config._attn_implementation = "eager"
    for sub in ("text_config", "vision_config"):
        if getattr(config, sub, None) is not None:
            getattr(config, sub)._attn_implementation = "eager"
    auto = AutoModelForImageTextToText if arch in MULTIMODAL else AutoModelForCausalLM
    model = auto.from_config(config)
    with torch.no_grad():  # biases and norms start at zero/one; make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


class CharTokenizer:
    """A minimal tokenizer for tiny models: one token per character, padding either side."""

    pad_token = "<pad>"
    eos_token = "<pad>"
    pad_token_id = 0

    def __init__(self, padding_side: str = "right", offset: int = 1):
        self.padding_side = padding_side
        self.offset = offset

    def _ids(self, text: str) -> list[int]:
        return [self.offset + (ord(c) % 90) for c in text]

    def __call__(self, texts, return_tensors="pt", padding=True):
        ids = [self._ids(t) for t in texts]
        width = max(map(len, ids))
        input_ids = torch.zeros(len(ids), width, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for i, row in enumerate(ids):
            sl = slice(width - len(row), width) if self.padding_side == "left" else slice(0, len(row))
            input_ids[i, sl] = torch.tensor(row)
            mask[i, sl] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids)

    def batch_decode(self, ids, skip_special_tokens=True):
        return [self.decode(row) for row in ids]


def concept_prompts(n: int) -> list[str]:
    """``n`` varied prompts built deterministically from templates and the concept word lists."""
    templates = [
        "The capital of {c} is known for its {a}s.",
        "In {m}, people from {c} often wear {k}.",
        "My favourite colour is {k}, and I was born in {m}.",
        "{n} {a}s were seen near the border of {c} on {w}.",
        "She said the {k} {a} arrived on a {w} in {m}.",
        "A {p} family moved to {c} with {n} children.",
    ]
    words = {key: hp_mini.concept_words(name) for key, name in
             [("c", "countries"), ("a", "animals"), ("m", "months"), ("k", "colours"),
              ("n", "numbers"), ("w", "weekdays"), ("p", "nationalities")]}
    out = []
    for i in itertools.count():
        if len(out) == n:
            return out
        fill = {key: ws[(i * (3 + 2 * j)) % len(ws)] for j, (key, ws) in enumerate(words.items())}
        out.append(templates[i % len(templates)].format(**fill))


def save_tiny_llama(out: Path, n_layers: int = 2, seed: int = 0) -> Path:
    """A tiny random Llama (4 heads of width 8) and a word-level tokenizer covering the
    test prompts and three concept word lists, saved with ``save_pretrained``."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    pre = Whitespace()
    words = ["<unk>", "<pad>", "<eos>"]
    texts = concept_prompts(64) + [w for c in ("countries", "months", "colours") for w in hp_mini.concept_words(c)]
    for text in texts:
        for piece, _ in pre.pre_tokenize_str(text):
            if piece not in words:
                words.append(piece)
    raw = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=48, num_hidden_layers=n_layers,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=1, eos_token_id=2,
                         bos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@contextlib.contextmanager
def edit_head_by_hand(site, head: int, fn):
    """Replace one head's slice of ``z`` (the output projection's input) by ``fn(z_h)``.

    Written with a plain forward pre-hook, independently of ``hp_mini.scale_heads``.
    """

    def hook(module, args):
        z = args[0].clone()
        sl = slice(head * site.d_head, (head + 1) * site.d_head)
        z[..., sl] = fn(z[..., sl])
        return (z,)

    handle = site.module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# --------------------------------------------------------------------------- #
# Each family's facts, restated by hand for the tests
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Known:
    layers: str  # from the model to its decoder layers
    out_proj: str  # from a layer to the attention output projection
    adds: str  # from a layer to the module whose output (x multiplier) is added to the residual
    midpoint: str | None  # from a layer to a module whose input is the residual after the attention add
    final_norm: str  # from the model to the final norm
    post_norm_gain: str | None = None  # "w" or "1+w" for post-norm layers
    multiplier: str | None = None  # config attribute multiplying the attention output
    mlp: str = "mlp"  # for parallel blocks: what the MLP adds


_LLAMA = Known("model.layers", "self_attn.o_proj", "self_attn", "post_attention_layernorm", "model.norm")
_GEMMA_POST = Known("model.layers", "self_attn.o_proj", "post_attention_layernorm", "pre_feedforward_layernorm",
                    "model.norm", "1+w")


def _lm(path: str, known: Known) -> Known:
    return Known(f"{path}.layers", known.out_proj, known.adds, known.midpoint, f"{path}.norm", known.post_norm_gain)


KNOWN = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "gemma": _LLAMA, "phi3": _LLAMA,
    "gemma2": _GEMMA_POST, "gemma3_text": _GEMMA_POST,
    "olmo2": Known("model.layers", "self_attn.o_proj", "post_attention_layernorm", "mlp", "model.norm", "w"),
    "granite": Known("model.layers", "self_attn.o_proj", "self_attn", "post_attention_layernorm", "model.norm",
                     multiplier="residual_multiplier"),
    "gpt2": Known("transformer.h", "attn.c_proj", "attn", "ln_2", "transformer.ln_f"),
    "gpt_neox": Known("gpt_neox.layers", "attention.dense", "attention", None, "gpt_neox.final_layer_norm"),
    "gpt_neox_sequential": Known("gpt_neox.layers", "attention.dense", "attention", "post_attention_layernorm",
                                 "gpt_neox.final_layer_norm"),
    "llava": _lm("model.language_model", _LLAMA), "llava_next": _lm("model.language_model", _LLAMA),
    "qwen2_vl": _lm("model.language_model", _LLAMA), "qwen2_5_vl": _lm("model.language_model", _LLAMA),
    "gemma3": _lm("model.language_model", _GEMMA_POST), "idefics3": _lm("model.text_model", _LLAMA),
}
FAMILIES = list(KNOWN)


def at(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _multiplier(model, known: Known) -> float:
    if known.multiplier is None:
        return 1.0
    return float(getattr(model.config, known.multiplier))


def ids_for(model, batch: int = 3, length: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 90, (batch, length), generator=torch.Generator().manual_seed(seed))


def run_capturing(model, arch: str, input_ids: torch.Tensor, attention_mask=None):
    """Run once; per layer, the projection's input ``z`` and the real attention write to the residual.

    The write is the residual after the attention add minus the residual before
    the layer (read at the inputs of the layer and of the module after the
    add), or, in a parallel block, the layer's output minus its input minus
    what the MLP adds.
    """
    known = KNOWN[arch]
    layers = at(model, known.layers)
    seen: dict = {}
    handles = []
    for i, layer in enumerate(layers):
        def before(m, args, kwargs, i=i):
            seen[("in", i)] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        def after(m, args, kwargs, out, i=i):
            seen[("out", i)] = _first(out).detach().clone()

        def z_hook(m, args, i=i):
            seen[("z", i)] = args[0].detach().clone()

        handles.append(layer.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(layer.register_forward_hook(after, with_kwargs=True))
        handles.append(at(layer, known.out_proj).register_forward_pre_hook(z_hook))
        if known.midpoint is not None:
            def mid(m, args, i=i):
                seen[("mid", i)] = args[0].detach().clone()
            handles.append(at(layer, known.midpoint).register_forward_pre_hook(mid))
        else:
            def mlp_out(m, args, out, i=i):
                seen[("mlp", i)] = _first(out).detach().clone()
            handles.append(at(layer, known.mlp).register_forward_hook(mlp_out))
    try:
        with torch.no_grad():
            kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
            logits = model(input_ids=input_ids, use_cache=False, **kwargs).logits
    finally:
        for h in handles:
            h.remove()
    writes, zs = [], []
    for i in range(len(layers)):
        if known.midpoint is not None:
            writes.append(seen[("mid", i)] - seen[("in", i)])
        else:
            writes.append(seen[("out", i)] - seen[("in", i)] - seen[("mlp", i)])
        zs.append(seen[("z", i)])
    return zs, writes, logits


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check_heads_sum_to_the_residual_write(model, arch: str) -> None:
    """At every position: sum of head contributions + the bias's share == what is added (1e-5 relative)."""
    assert len(hp_mini.attention_heads(model)) == 2
    check_heads_sum_to_the_residual_write_all_layers(model, arch)


def check_heads_sum_to_the_residual_write_all_layers(model, arch: str) -> None:
    sites = hp_mini.attention_heads(model)
    zs, writes, _ = run_capturing(model, arch, ids_for(model))
    for site, z, write in zip(sites, zs, writes):
        x = site.contributions(z)
        assert x.shape == (*z.shape[:-1], site.n_heads, site.d_model)
        share = site.bias_share(z)
        total = x.sum(-2) + (share if share is not None else 0)
        err = rel(total, write)
        assert err < 1e-5, f"{arch} layer {site.layer}: relative error {err:.2e}"
        # and per position, not only overall
        per_token = (total - write).norm(dim=-1) / write.norm(dim=-1)
        assert float(per_token.max()) < 1e-4, f"{arch} layer {site.layer}: worst token {float(per_token.max()):.2e}"


def check_pooled_heads_sum_to_the_pooled_write(model, arch: str) -> None:
    """record_heads (mean pooling): sum of pooled contributions + bias share == mean of the real writes."""
    texts = ["abcdefg", "hello w", "zyx 123"]  # one length, so no padding: the oracle runs the same batch
    tok = CharTokenizer()
    acts = hp_mini.record_heads(model, tok, texts, progress=False)
    batch = tok(texts)
    _, writes, _ = run_capturing(model, arch, batch["input_ids"], batch["attention_mask"])
    pooled_real = torch.stack([w.mean(1) for w in writes], 1)  # [n, layers, d_model]
    total = acts.contributions().sum(2)
    shares = acts.bias_shares()
    if shares is not None:
        total = total + shares
    err = rel(total, pooled_real)
    assert err < 1e-5, f"{arch}: pooled relative error {err:.2e}"


def hand_write(model, arch: str, layer: int, head: int, z: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Head ``head``'s residual write, computed by hand from ``z`` and the projection output ``o``."""
    known = KNOWN[arch]
    proj = at(at(model, known.layers)[layer], known.out_proj)
    weight = proj.weight.T if type(proj).__name__ == "Conv1D" else proj.weight  # [d_model, H * d_head]
    n_heads = hp_mini.model_parts(model).n_heads
    d_head = weight.shape[1] // n_heads
    sl = slice(head * d_head, (head + 1) * d_head)
    piece = z[..., sl] @ weight[:, sl].T
    if known.post_norm_gain is not None:
        norm = at(at(model, known.layers)[layer], known.adds)
        w = norm.weight
        gain = 1 + w if known.post_norm_gain == "1+w" else w
        eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon")
        piece = gain * piece / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + eps)
    return piece * _multiplier(model, known)


@contextlib.contextmanager
def edit_residual_by_hand(model, arch: str, layer: int, head: int, alpha: float):
    """Add ``(alpha - 1) x_h`` to what layer ``layer``'s attention adds, with plain hooks."""
    known = KNOWN[arch]
    block = at(model, known.layers)[layer]
    proj, adds = at(block, known.out_proj), at(block, known.adds)
    seen = {}

    def keep(m, args, out):
        seen["z"], seen["o"] = args[0], _first(out)

    def edit(m, args, out):
        x = hand_write(model, arch, layer, head, seen["z"], seen["o"])
        change = (alpha - 1) * x / _multiplier(model, known)  # the multiplier applies after this module
        if isinstance(out, tuple):
            return (out[0] + change, *out[1:])
        return out + change

    handles = [proj.register_forward_hook(keep), adds.register_forward_hook(edit)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def check_scale_heads_is_the_hand_edit(model, arch: str, alpha: float) -> None:
    ids = ids_for(model, 2, 6, seed=1)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with edit_residual_by_hand(model, arch, 1, 1, alpha):
            expected = model(input_ids=ids).logits
        with edit_residual_by_hand(model, arch, 0, 2, alpha):
            expected0 = model(input_ids=ids).logits
        with hp_mini.scale_heads(model, {(1, 1): alpha}):
            got = model(input_ids=ids).logits
        with hp_mini.scale_heads(model, {(0, 2): alpha}):
            got0 = model(input_ids=ids).logits
    assert rel(expected, plain) > 1e-4, f"{arch}: the hand edit changed nothing"
    assert rel(got, expected) < 1e-5, f"{arch}: alpha={alpha}, layer 1: relative error {rel(got, expected):.2e}"
    assert rel(got0, expected0) < 1e-5, f"{arch}: alpha={alpha}, layer 0: relative error {rel(got0, expected0):.2e}"


def check_final_norm_folding(model, arch: str) -> None:
    """The folded unembedding dictionary and the final-norm description reproduce the model's logits."""
    known = KNOWN[arch]
    norm_module = at(model, known.final_norm)
    seen = {}
    handle = norm_module.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    ids = ids_for(model, 2, 5, seed=2)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        handle.remove()
    x = seen["x"]
    parts = hp_mini.model_parts(model)
    norm = parts.final_norm
    assert norm.module is norm_module
    assert rel(norm(x), norm_module(x)) < 1e-6
    folded = hp_mini.unembedding_dictionary(model, CharTokenizer(), normalize=False, final_norm=True).atoms
    xc = x - x.mean(-1, keepdim=True) if isinstance(norm_module, torch.nn.LayerNorm) else x
    raw = (xc @ folded.T) * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + norm.eps)
    if getattr(norm_module, "bias", None) is not None:
        raw = raw + parts.unembedding.weight @ norm_module.bias
    un = parts.unembedding
    raw = raw * un.scale
    if un.softcap is not None:
        raw = un.softcap * torch.tanh(raw / un.softcap)
    assert rel(raw, logits) < 1e-5, f"{arch}: folded logits differ by {rel(raw, logits):.2e}"
    assert rel(un.logits(norm(x)), logits) < 1e-5


def direct_logits_by_hook(model, tok, prompt: str, word: str) -> torch.Tensor:
    """Each head's direct logit for ``word`` at the last position of ``prompt``, ``[layers, heads]``,
    from the inputs of the output projections (a hook of its own, not ``record_heads``); the
    final norm's gain applied, its 1 / rms left out."""
    sites = hp_mini.attention_heads(model)
    parts = hp_mini.model_parts(model)
    z = {}
    handles = [
        s.module.register_forward_pre_hook(lambda m, args, layer=s.layer: z.__setitem__(layer, args[0][0, -1]))
        for s in sites
    ]
    try:
        with torch.no_grad():
            model(**tok(prompt, return_tensors="pt"))
    finally:
        for h in handles:
            h.remove()
    token = tok.encode(word, add_special_tokens=False)[0]
    U = parts.unembedding.weight
    return torch.stack([(s.contributions(z[s.layer]) * parts.final_norm.gain) @ U[token] for s in sites])
