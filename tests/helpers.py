"""Shared test helpers: one table of tiny models with each family's facts restated by hand,
the tiny models built from it, a character tokenizer, and exactness checks written
independently of hp_mini's own architecture declarations."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

import hp_mini
from hp_mini.model.architectures import Norm

# --------------------------------------------------------------------------- #
# Each family's facts, restated by hand: one row per tiny model
#
# A new family is its declaration (hp_mini.register_architecture, or a line of
# hp_mini/model/architectures.py) and one row of KNOWN below; test_architectures.py
# fails for a declared family without a row.
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Known:
    """One tiny model and what is known about it, restated from its source code.

    Nothing here is read from hp_mini's declarations, so a wrong declaration
    fails the tests. ``layers`` and ``final_norm`` are attribute paths from the
    model; ``out_proj``, ``adds``, ``midpoint`` and ``mlp_adds`` from one layer.
    """

    model: tuple[str, dict]  # a transformers config class and its arguments, or an open_clip model class
    family: str  # the text family hp_mini must find, or the class declared with its heads (open_clip)
    heads: tuple[int, int]  # (n_heads, d_head) of every layer of the tiny model
    layers: str = "model.layers"
    out_proj: str = "self_attn.o_proj"  # its input is the concatenation of the heads
    adds: str = "self_attn"  # whose output (times the multiplier) the attention adds to the residual
    midpoint: str | None = "post_attention_layernorm"  # its input is the residual after the attention add
    mlp_adds: str = "mlp"  # whose output (times Granite's multiplier) the MLP adds to the residual
    multiplier: str | None = None  # multiplies the output of adds: "config.<name>" of the model, or a layer's parameter
    post_norm_gain: str | None = None  # post-norm layers ("adds" is the norm): "w" or "1+w"
    parallel: bool = False  # attention and MLP read the same residual (no midpoint then)
    n_layers: int = 2
    final_norm: str = "model.norm"
    final_norm_kind: str = "rms"  # "rms" or "layer"
    final_norm_gain: str = "w"  # "w" or "1+w"
    logit_scale: float = 1.0  # multiplies the logits
    softcap: float | None = None  # c of c * tanh(logits / c)
    wrapper: str | None = None  # the vision-language wrapper's model_type
    image_token: int | None = None
    token_type_ids: bool = False  # the wrapper's forward with images needs token_type_ids

    @property
    def images(self) -> bool:
        """Whether this is an open_clip model, run on images through its image encoder."""
        return self.model[0].startswith("open_clip.")


_COMMON = dict(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2)
_TEXT = dict(**_COMMON, num_attention_heads=4, num_key_value_heads=2)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
               patch_size=8)
_MROPE = dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]})
_CLIP = dict(embed_dim=16, vision_cfg=dict(layers=2, width=32, head_width=8, patch_size=8, image_size=16),
             text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=4, layers=1))

# Post-norm layers (Gemma 2, Gemma 3): a norm between each sublayer and its residual add.
_GEMMA_POST = dict(adds="post_attention_layernorm", midpoint="pre_feedforward_layernorm",
                   mlp_adds="post_feedforward_layernorm", post_norm_gain="1+w", final_norm_gain="1+w")
_IN_LANGUAGE_MODEL = dict(layers="model.language_model.layers", final_norm="model.language_model.norm")
_IN_TEXT_MODEL = dict(layers="model.text_model.layers", final_norm="model.text_model.norm")
_LLAMA_TEXT = dict(model_type="llama", **_TEXT)
_CLIP_VISION = dict(model_type="clip_vision_model", **_VISION)
_GPT_NEOX = Known(("GPTNeoXConfig", dict(**_COMMON, num_attention_heads=4, use_parallel_residual=True)), "gpt_neox",
                  (4, 12), "gpt_neox.layers", "attention.dense", "attention", None, parallel=True,
                  final_norm="gpt_neox.final_layer_norm", final_norm_kind="layer")
_OPEN_CLIP = Known(("open_clip.model.CLIP", _CLIP), "open_clip.model.CLIP", (4, 8), "visual.transformer.resblocks",
                   "attn.out_proj", "attn", "ln_2", final_norm="visual.ln_post", final_norm_kind="layer")

KNOWN: dict[str, Known] = {
    # text families
    "llama": Known(("LlamaConfig", dict(**_COMMON, num_attention_heads=6, num_key_value_heads=2)), "llama", (6, 8)),
    "mistral": Known(("MistralConfig", _TEXT), "mistral", (4, 12)),
    "qwen2": Known(("Qwen2Config", _TEXT), "qwen2", (4, 12)),
    "qwen3": Known(("Qwen3Config", dict(**_TEXT, head_dim=16)), "qwen3", (4, 16)),
    "gemma": Known(("GemmaConfig", dict(**_COMMON, num_attention_heads=4, num_key_value_heads=1, head_dim=16)),
                   "gemma", (4, 16), final_norm_gain="1+w"),
    "phi3": Known(("Phi3Config", dict(**_COMMON, num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)),
                  "phi3", (4, 12)),
    # with an attention bias, so the bias's share passes through the post-norm
    "gemma2": Known(("Gemma2Config", dict(**_TEXT, head_dim=16, attention_bias=True)), "gemma2", (4, 16),
                    softcap=30.0, **_GEMMA_POST),
    "gemma3_text": Known(("Gemma3TextConfig", dict(**_COMMON, num_attention_heads=4, num_key_value_heads=1,
                                                   head_dim=16)), "gemma3_text", (4, 16), **_GEMMA_POST),
    "olmo2": Known(("Olmo2Config", dict(**_TEXT, attention_bias=True)), "olmo2", (4, 12),
                   adds="post_attention_layernorm", midpoint="mlp", mlp_adds="post_feedforward_layernorm",
                   post_norm_gain="w"),
    "granite": Known(("GraniteConfig", dict(**_TEXT, residual_multiplier=0.22, logits_scaling=4.0,
                                            embedding_multiplier=3.0, attention_multiplier=0.3, attention_bias=True)),
                     "granite", (4, 12), multiplier="config.residual_multiplier", logit_scale=0.25),
    "gpt2": Known(("GPT2Config", dict(vocab_size=97, n_embd=48, n_layer=2, n_head=4, n_positions=64)), "gpt2",
                  (4, 12), "transformer.h", "attn.c_proj", "attn", "ln_2", final_norm="transformer.ln_f",
                  final_norm_kind="layer"),
    "gpt_neox": _GPT_NEOX,
    "gpt_neox_sequential": replace(_GPT_NEOX, model=("GPTNeoXConfig", dict(**_COMMON, num_attention_heads=4,
                                                                          use_parallel_residual=False)),
                                   midpoint="post_attention_layernorm", parallel=False),
    # vision-language wrappers: their language model is exercised
    "llava": Known(("LlavaConfig", dict(text_config=_LLAMA_TEXT, vision_config=_CLIP_VISION, image_token_index=96)),
                   "llama", (4, 12), wrapper="llava", image_token=96, **_IN_LANGUAGE_MODEL),
    "llava_next": Known(("LlavaNextConfig", dict(text_config=_LLAMA_TEXT, vision_config=_CLIP_VISION,
                                                 image_token_index=96)),
                        "llama", (4, 12), wrapper="llava_next", image_token=96, **_IN_LANGUAGE_MODEL),
    "qwen2_vl": Known(("Qwen2VLConfig", dict(text_config={**_TEXT, **_MROPE},
                                             vision_config=dict(depth=1, embed_dim=32, hidden_size=48, num_heads=2))),
                      "qwen2_vl_text", (4, 12), wrapper="qwen2_vl", image_token=151655, **_IN_LANGUAGE_MODEL),
    "qwen2_5_vl": Known(("Qwen2_5_VLConfig", dict(text_config={**_TEXT, **_MROPE},
                                                  vision_config=dict(depth=1, hidden_size=32, out_hidden_size=48,
                                                                     num_heads=2, intermediate_size=64))),
                        "qwen2_5_vl_text", (4, 12), wrapper="qwen2_5_vl", image_token=151655, **_IN_LANGUAGE_MODEL),
    # Gemma 3's soft cap belongs to its text config; the wrapper applies none
    "gemma3": Known(("Gemma3Config", dict(text_config=dict(**_TEXT, head_dim=16), vision_config=_VISION)),
                    "gemma3_text", (4, 16), wrapper="gemma3", image_token=262144, token_type_ids=True,
                    **_GEMMA_POST, **_IN_LANGUAGE_MODEL),
    "idefics3": Known(("Idefics3Config", dict(text_config=_LLAMA_TEXT, vision_config=_VISION)), "llama", (4, 12),
                      wrapper="idefics3", image_token=128257, **_IN_TEXT_MODEL),
    "smolvlm": Known(("SmolVLMConfig", dict(text_config=_LLAMA_TEXT, vision_config=_VISION)), "llama", (4, 12),
                     wrapper="smolvlm", image_token=128257, **_IN_TEXT_MODEL),
    # open_clip's image encoder (its heads made visible by split_heads)
    "open_clip": _OPEN_CLIP,
    "open_clip_custom_text": replace(_OPEN_CLIP, model=("open_clip.model.CustomTextCLIP", _CLIP),
                                     family="open_clip.model.CustomTextCLIP"),
    # LayerScale multiplies the attention output by a learnt gamma before the add
    "open_clip_layer_scale": replace(_OPEN_CLIP, model=("open_clip.model.CLIP", {
        **_CLIP, "vision_cfg": {**_CLIP["vision_cfg"], "ls_init_value": 0.5}}), multiplier="ls_1.gamma"),
}
FAMILIES = list(KNOWN)
TEXT_ARCHITECTURES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox"]


def without_facts(registered: Mapping[str, str]) -> list[str]:
    """The names in ``registered`` (name -> kind, as ``registered_architectures()`` gives them)
    that no row of :data:`KNOWN` restates as that kind."""
    stated = {(k.family, "heads" if k.images else "text") for k in KNOWN.values()}
    stated |= {(k.wrapper, "wrapper") for k in KNOWN.values() if k.wrapper is not None}
    return [name for name, kind in registered.items() if (name, kind) not in stated]


# --------------------------------------------------------------------------- #
# Tiny models, built from the table (nothing is downloaded)
# --------------------------------------------------------------------------- #


def tiny_model(arch: str, seed: int = 0):
    """The tiny random model of row ``arch`` of :data:`KNOWN`, in eval mode, float32.

    Hugging Face models use eager attention; open_clip models are split by
    ``split_heads``. Biases, norms and LayerScales are moved off their initial
    values so that they matter.
    """
    known = KNOWN[arch]
    name, kwargs = known.model
    torch.manual_seed(seed)
    if known.images:
        pytest.importorskip("open_clip")
        module, _, cls = name.rpartition(".")
        model = getattr(importlib.import_module(module), cls)(**kwargs)
    else:
        import transformers

        config = getattr(transformers, name)(**kwargs)
        config._attn_implementation = "eager"
        for sub in ("text_config", "vision_config"):
            if getattr(config, sub, None) is not None:
                getattr(config, sub)._attn_implementation = "eager"
        auto = transformers.AutoModelForImageTextToText if known.wrapper else transformers.AutoModelForCausalLM
        model = auto.from_config(config)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(("bias", "gamma")) or "norm" in pname or "ln_" in pname:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    if known.images:
        from hp_mini.model.open_clip import split_heads

        split_heads(model)
    return model


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


def tiny_edit_llama():
    """A 3-layer Llama with 4 heads a layer and a 50-token vocabulary (seed 0), for the edit experiments' tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50)
    return LlamaForCausalLM(cfg).eval()


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
# Exactness checks, written from the facts above
# --------------------------------------------------------------------------- #


def at(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def multiplier(model, arch: str, layer: int) -> torch.Tensor | float:
    """What multiplies the output of ``adds`` of layer ``layer`` before the residual add (1 if nothing)."""
    path = KNOWN[arch].multiplier
    if path is None:
        return 1.0
    if path.startswith("config."):
        return float(at(model, path))
    return at(at(model, KNOWN[arch].layers)[layer], path).detach()


def inputs_for(arch: str, batch: int = 3, length: int = 7, seed: int = 0) -> torch.Tensor:
    """Random token ids ``[batch, length]``, or random images for an open_clip model."""
    generator = torch.Generator().manual_seed(seed)
    known = KNOWN[arch]
    if known.images:
        size = known.model[1]["vision_cfg"]["image_size"]
        return torch.randn(batch, 3, size, size, generator=generator)
    return torch.randint(1, 90, (batch, length), generator=generator)


def forward(model, arch: str, inputs: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """The logits of token ids, or an open_clip model's image embeddings."""
    if KNOWN[arch].images:
        return model.encode_image(inputs)
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    return model(input_ids=inputs, use_cache=False, **kwargs).logits


def run_capturing(model, arch: str, inputs: torch.Tensor, attention_mask=None):
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
            handles.append(at(layer, known.mlp_adds).register_forward_hook(mlp_out))
    try:
        with torch.no_grad():
            output = forward(model, arch, inputs, attention_mask)
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
    return zs, writes, output


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check_heads_sum_to_the_residual_write(model, arch: str) -> None:
    """At every position of every layer: sum of head contributions + the bias's share == what is added."""
    sites = hp_mini.attention_heads(model)
    zs, writes, _ = run_capturing(model, arch, inputs_for(arch))
    assert len(sites) == len(writes)
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
    """Recorded with mean pooling: sum of pooled contributions + bias share == mean of the real writes."""
    if KNOWN[arch].images:
        from hp_mini.record.images import record_image_heads

        inputs, mask = inputs_for(arch, seed=3), None
        acts = record_image_heads(model, None, inputs, pool="all")
    else:
        prompts = ["abcdefg", "hello w", "zyx 123"]  # one length, so no padding: the oracle runs the same batch
        tok = CharTokenizer()
        acts = hp_mini.record_heads(model, tok, prompts, progress=False)
        batch = tok(prompts)
        inputs, mask = batch["input_ids"], batch["attention_mask"]
    _, writes, _ = run_capturing(model, arch, inputs, mask)
    pooled_real = torch.stack([w.mean(1) for w in writes], 1)  # [n, layers, d_model]
    total = acts.contributions().sum(2)
    shares = acts.bias_shares()
    if shares is not None:
        total = total + shares
    err = rel(total, pooled_real)
    assert err < 1e-5, f"{arch}: pooled relative error {err:.2e}"


def _n_heads(model, arch: str, block) -> int:
    if KNOWN[arch].images:
        return at(block, KNOWN[arch].adds).num_heads
    config = model.config.get_text_config()
    return getattr(config, "num_attention_heads", None) or config.n_head


def hand_piece(model, arch: str, layer: int, head: int, z: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Head ``head``'s share of the output of ``adds``, by hand from ``z`` and the projection output ``o``.

    The residual write is this times :func:`multiplier`.
    """
    known = KNOWN[arch]
    block = at(model, known.layers)[layer]
    proj = at(block, known.out_proj)
    weight = proj.weight.T if type(proj).__name__ == "Conv1D" else proj.weight  # [d_model, H * d_head]
    d_head = weight.shape[1] // _n_heads(model, arch, block)
    sl = slice(head * d_head, (head + 1) * d_head)
    piece = z[..., sl] @ weight[:, sl].T
    if known.post_norm_gain is not None:
        norm = at(block, known.adds)
        w = norm.weight
        gain = 1 + w if known.post_norm_gain == "1+w" else w
        eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon")
        piece = gain * piece / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + eps)
    return piece


@contextlib.contextmanager
def edit_residual_by_hand(model, arch: str, layer: int, head: int, alpha: float):
    """Add ``(alpha - 1) x_h`` to what layer ``layer``'s attention adds, with plain hooks."""
    known = KNOWN[arch]
    block = at(model, known.layers)[layer]
    proj, adds = at(block, known.out_proj), at(block, known.adds)
    seen = {}

    def keep(m, args, out):
        seen["z"], seen["o"] = args[0], _first(out)

    def edit(m, args, out):  # the multiplier applies after this module
        change = (alpha - 1) * hand_piece(model, arch, layer, head, seen["z"], seen["o"])
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
    inputs = inputs_for(arch, 2, 6, seed=1)
    with torch.no_grad():
        plain = forward(model, arch, inputs)
        with edit_residual_by_hand(model, arch, 1, 1, alpha):
            expected = forward(model, arch, inputs)
        with edit_residual_by_hand(model, arch, 0, 2, alpha):
            expected0 = forward(model, arch, inputs)
        with hp_mini.scale_heads(model, {(1, 1): alpha}):
            got = forward(model, arch, inputs)
        with hp_mini.scale_heads(model, {(0, 2): alpha}):
            got0 = forward(model, arch, inputs)
    assert rel(expected, plain) > 1e-4, f"{arch}: the hand edit changed nothing"
    assert rel(got, expected) < 1e-5, f"{arch}: alpha={alpha}, layer 1: relative error {rel(got, expected):.2e}"
    assert rel(got0, expected0) < 1e-5, f"{arch}: alpha={alpha}, layer 0: relative error {rel(got0, expected0):.2e}"


def check_final_norm_folding(model, arch: str) -> None:
    """The final-norm description reproduces the model's norm; for a language model, the folded
    unembedding dictionary and the unembedding reproduce its logits."""
    known = KNOWN[arch]
    norm_module = at(model, known.final_norm)
    seen = {}
    handle = norm_module.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    try:
        with torch.no_grad():
            logits = forward(model, arch, inputs_for(arch, 2, 5, seed=2))
    finally:
        handle.remove()
    x = seen["x"]
    norm = Norm.of(norm_module) if known.images else hp_mini.model_parts(model).final_norm
    assert norm.module is norm_module
    with torch.no_grad():
        assert rel(norm(x), norm_module(x)) < 1e-6
    if known.images:
        return
    parts = hp_mini.model_parts(model)
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


# --------------------------------------------------------------------------- #
# The browser checker (a script, not a module of the package)
# --------------------------------------------------------------------------- #


def load_check_pages():
    """tests/browser/check_pages.py, loaded once as the module ``check_pages``."""
    if "check_pages" not in sys.modules:
        path = Path(__file__).resolve().parent / "browser" / "check_pages.py"
        spec = importlib.util.spec_from_file_location("check_pages", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["check_pages"] = module
        spec.loader.exec_module(module)
    return sys.modules["check_pages"]


# --------------------------------------------------------------------------- #
# The LLaVAs' training command
# --------------------------------------------------------------------------- #


def train_tiny_llava(name: str, out: Path) -> dict:
    """``python -m hp_mini train NAME --tiny --quiet --out OUT``, checked; returns its ``training.json``.

    Checks what every LLaVA's run records: the name, the file's SHA-256 and size,
    the settings, the command, falling losses, and no temporary file left.
    """
    import json

    from hp_mini.cli import main as cli_main
    from hp_mini.vision import llava

    assert cli_main(["train", name, "--tiny", "--quiet", "--out", str(out)]) == 0
    record = json.loads((out.parent / llava.TRAINING_RECORD).read_text())
    assert record["name"] == name
    assert record["sha256"] == llava.file_sha256(out) and record["bytes"] == out.stat().st_size
    assert record["training"]["threads"] == 1 and record["training"]["seconds"] > 0
    assert record["training"]["settings"]["steps"] == llava.TINY["steps"]
    assert record["command"] == f"python -m hp_mini train {name} --threads 1 --tiny"
    for stage in ("tower", "projector"):
        assert record["training"]["final_losses"][stage] < record["training"]["first_losses"][stage], stage
    assert sorted(p.name for p in out.parent.iterdir()) == [llava.TRAINING_RECORD, out.name]  # no temporary left
    return record
