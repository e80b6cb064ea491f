"""Shared fixtures: tiny random models of every supported text architecture, and SmolLM2."""

from __future__ import annotations

import contextlib

import pytest
import torch

import hp_mini

# Tiny configs, one per architecture family; built locally, nothing is downloaded.
_COMMON = dict(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2)


def _tiny_config(arch: str):
    import transformers as tf

    if arch == "llama":  # grouped-query attention, as in SmolLM2
        return tf.LlamaConfig(**_COMMON, num_attention_heads=6, num_key_value_heads=2)
    if arch == "mistral":
        return tf.MistralConfig(**_COMMON, num_attention_heads=4, num_key_value_heads=2)
    if arch == "qwen2":
        return tf.Qwen2Config(**_COMMON, num_attention_heads=4, num_key_value_heads=2)
    if arch == "qwen3":
        return tf.Qwen3Config(**_COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    if arch == "gemma2":
        return tf.Gemma2Config(**_COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**_COMMON, num_attention_heads=4, num_key_value_heads=1, head_dim=16)
    if arch == "phi3":
        return tf.Phi3Config(**_COMMON, num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=97, n_embd=48, n_layer=2, n_head=4, n_positions=64)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(**_COMMON, num_attention_heads=4)
    raise KeyError(arch)


TEXT_ARCHITECTURES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2", "gpt_neox"]


def tiny_model(arch: str, seed: int = 0):
    """A tiny random causal LM of architecture ``arch`` in eval mode, float32."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = _tiny_config(arch)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config)
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

    def __init__(self, padding_side: str = "right"):
        self.padding_side = padding_side

    def _ids(self, text: str) -> list[int]:
        return [1 + (ord(c) % 90) for c in text]

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

    def batch_decode(self, ids, skip_special_tokens=True):
        return ["".join(chr(int(i)) for i in row) for row in ids]


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct and its tokenizer (loaded once per session)."""
    return hp_mini.load_model()


def concept_prompts(n: int) -> list[str]:
    """``n`` varied prompts built deterministically from templates and the concept word lists."""
    import itertools

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


@pytest.fixture(scope="session")
def smollm2_heads(smollm2):
    """SmolLM2 head outputs on 32 prompts (store="samples"), recorded once per session."""
    model, tok = smollm2
    return hp_mini.record_heads(model, tok, concept_prompts(32), batch_size=16, progress=False)


@contextlib.contextmanager
def edit_head_by_hand(site, head: int, fn):
    """Replace one head's slice of ``z`` (the output projection's input) by ``fn(z_h)``.

    Written here with a plain forward pre-hook, independently of ``hp_mini.scale_heads``,
    so the tests of editing compare the library with a computation of their own.
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
