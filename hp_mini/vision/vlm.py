"""``shapes-vlm``: a small LLaVA trained from scratch on synthetic shape scenes.

The model is transformers' own :class:`~transformers.LlavaForConditionalGeneration`:
a CLIP vision tower (:class:`~transformers.CLIPVisionConfig`, 48x48 images in
12x12 patches, so 16 image tokens), LLaVA's two-layer projector, and a
Llama language model (:class:`~transformers.LlamaConfig`) over a word-level
vocabulary of a few dozen words. The processor is a real
:class:`~transformers.LlavaProcessor`, so ``"<image>"`` in a prompt expands to
the 16 image-token placeholders exactly as it does for LLaVA checkpoints.

Pretrained weights cannot be downloaded here, and SmolLM2 as the language
model would not train in a few CPU minutes, so the first call of
``hp_mini.load_model("shapes-vlm")`` trains this model on CPU (seeded, a few
minutes) and caches it under :func:`hp_mini.model.loading.cache_dir`; later calls
load the cache in about a second (checked against its manifest, rebuilt when
damaged, and always built from the expected configuration:
:func:`read_cached_vlm`). Training has two phases: the vision tower
first learns the scenes' attributes through linear probes on its image
tokens, then the whole model learns to caption and answer
(:func:`train_shapes_vlm`).

The model answers two kinds of prompt:

- ``caption_prompt()`` -> ``"<image> describe the image ."`` is answered with a
  caption such as ``"three small red circles on the left"``;
- ``question_prompt(q)`` -> ``"<image> " + q`` is answered with one word, for
  the questions of :data:`hp_mini.vision.shapes.QUESTIONS`.

Example
-------
>>> import hp_mini
>>> from hp_mini.vision import shapes_dataset, caption_prompt
>>> model, processor = hp_mini.load_model("shapes-vlm")          # doctest: +SKIP
>>> ds = shapes_dataset(2, seed=1)
>>> hp_mini.generate(model, processor, [caption_prompt()] * 2, images=ds["image"],
...                  max_new_tokens=8)                              # doctest: +SKIP
['three small red circles on the left', ...]
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hp_mini.model.cache import cache_dir, load_cached
from hp_mini.vision import shapes
from hp_mini.vision.training import torch_threads

__all__ = [
    "foreground_weights",
    "scene_pixel_values",
    "AnswerBatch",
    "CAPTION_PROMPT",
    "IMAGE_TOKEN",
    "TRAINING",
    "ask",
    "build_processor",
    "build_tokenizer",
    "build_vlm",
    "caption_prompt",
    "cosine_schedule",
    "describe",
    "image_processor",
    "image_tokens",
    "load_shapes_vlm",
    "load_trained_vlm",
    "pad_examples",
    "question_prompt",
    "read_cached_vlm",
    "train_shapes_vlm",
    "train_with_probes",
]

IMAGE_TOKEN = "<image>"
PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
CAPTION_PROMPT = f"{IMAGE_TOKEN} describe the image ."
PATCH_SIZE = 12

# Everything that determines the trained weights; its hash names the cache folder.
TRAINING: dict[str, object] = {
    "version": 3,  # bumped when the training code changes what the same settings produce
    "seed": 0,
    "train_scenes": 20000,
    "scene_seed": 1000,  # held-out evaluations use other seeds
    # Phase 1: the vision tower and projector alone, with linear attribute probes.
    "probe_steps": 2000,
    "probe_batch_size": 64,
    "probe_lr": 3e-3,
    # Phase 2: the whole LLaVA on captions and answers, the probes still attached.
    "steps": 600,
    "batch_size": 32,
    "lr": 2e-3,
    "vision_lr": 2e-3,  # tower, projector and probes in phase 2
    "warmup": 50,
    "weight_decay": 0.01,
    "probe_weight": 1.0,
    "caption_fraction": 0.4,
    "feature_layer": -1,
    "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 8},
}


def caption_prompt() -> str:
    """The prompt the model answers with a caption."""
    return CAPTION_PROMPT


def question_prompt(question: str) -> str:
    """The prompt the model answers with a one-word answer to ``question``."""
    return f"{IMAGE_TOKEN} {question}"


SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, EOS, IMAGE_TOKEN)
"""The special tokens, the first ids of every word-level vocabulary."""


def _words(words=None) -> list[str]:
    if words is None:
        extra = CAPTION_PROMPT.replace(IMAGE_TOKEN, "").split()
        words = set(shapes.vocabulary()) | set(extra)
    return [*SPECIAL_TOKENS] + sorted(set(words))


def build_tokenizer(words=None):
    """A word-level tokenizer (``tokenizers`` WordLevel) as a ``PreTrainedTokenizerFast``.

    Lower-cases, splits on whitespace and punctuation; ``"<image>"``,
    ``"<pad>"``, ``"<eos>"`` and ``"<unk>"`` are special tokens. Decoding
    joins words with single spaces.

    Parameters
    ----------
    words : iterable of str, optional
        The plain words of the vocabulary (sorted after the special tokens).
        Default: the words of the shape scenes' captions, questions and answers.
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    if words is not None:
        words = list(words)
        bad = [w for w in words if not isinstance(w, str) or not w or w != w.lower() or len(w.split()) != 1
               or w in SPECIAL_TOKENS]
        if bad:
            raise ValueError(
                f"build_tokenizer: words must be lower-case single words that are not special tokens, got {bad[:5]!r}"
            )
    vocab = {w: i for i, w in enumerate(_words(words))}
    backend = Tokenizer(WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="right",
    )
    return tok


def image_processor(n: int = shapes.IMAGE_SIZE):
    """A :class:`~transformers.CLIPImageProcessor` for ``n`` x ``n`` RGB images: no resizing, mean and std 0.5."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=False,
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
        size={"height": n, "width": n},
        crop_size={"height": n, "width": n},
    )


def build_processor(tokenizer=None):
    """A :class:`~transformers.LlavaProcessor` for 48x48 scenes (no resizing, mean/std 0.5)."""
    from transformers import LlavaProcessor

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    return LlavaProcessor(
        image_processor=image_processor(),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
    )


def build_vlm(
    tokenizer=None,
    *,
    vision: dict | None = None,
    text: dict | None = None,
    feature_layer: int | None = None,
    seed: int = 0,
):
    """An untrained LLaVA for the scenes (random weights from ``seed``).

    ``vision`` and ``text`` override fields of the vision and language configs
    (the defaults are those of :data:`TRAINING`).
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    vocab = tokenizer.get_vocab()
    n = shapes.IMAGE_SIZE
    vision_cfg = CLIPVisionConfig(
        image_size=n, patch_size=PATCH_SIZE, num_channels=3, **{**TRAINING["vision"], **(vision or {})}  # type: ignore[dict-item]
    )
    text_kw = {**TRAINING["text"], **(text or {})}  # type: ignore[dict-item]
    text_cfg = LlamaConfig(
        vocab_size=len(vocab),
        num_key_value_heads=text_kw["num_attention_heads"],
        max_position_embeddings=128,
        pad_token_id=vocab[PAD],
        eos_token_id=vocab[EOS],
        bos_token_id=None,
        tie_word_embeddings=False,
        **text_kw,
    )
    config = LlavaConfig(
        vision_config=vision_cfg,
        text_config=text_cfg,
        image_token_index=vocab[IMAGE_TOKEN],
        vision_feature_layer=int(TRAINING["feature_layer"] if feature_layer is None else feature_layer),  # type: ignore[call-overload]
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=(n // PATCH_SIZE) ** 2,
        pad_token_id=vocab[PAD],
        eos_token_id=vocab[EOS],
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = vocab[PAD]
    model.generation_config.eos_token_id = vocab[EOS]
    model.generation_config.bos_token_id = None
    return model


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


def scene_pixel_values(scene_list) -> torch.Tensor:
    """Normalised pixel values ``[n, 3, 48, 48]``, as the processor computes them."""
    arr = shapes.scene_pixels([shapes.render_scene(s) for s in scene_list]).astype(np.float32)
    arr = (arr / 255.0 - 0.5) / 0.5
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _examples(tokenizer, scene_list, tasks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (loss on the answer only)."""
    vocab = tokenizer.get_vocab()
    n_image = (shapes.IMAGE_SIZE // PATCH_SIZE) ** 2
    rows, targets = [], []
    for scene, task in zip(scene_list, tasks):
        if task == "caption":
            prompt, answer = CAPTION_PROMPT, shapes.caption_of(scene)
        else:
            qs, ans = shapes.qa_of(scene)
            k = shapes.ATTRIBUTES.index(task)
            prompt, answer = question_prompt(qs[k]), ans[k]
        p = [vocab[IMAGE_TOKEN]] * n_image + [vocab[w] for w in prompt.split()[1:]]
        a = [vocab[w] for w in answer.split()] + [vocab[EOS]]
        rows.append(p + a)
        targets.append([-100] * len(p) + a)
    return pad_examples(rows, targets, vocab[PAD])


def pad_examples(rows: list[list[int]], targets: list[list[int]], pad_id: int):
    """Right-pad training examples: ``input_ids``, ``attention_mask``, ``labels`` (``-100`` where no loss)."""
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad_id)
    labels = torch.full((len(rows), t), -100)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, (r, y) in enumerate(zip(rows, targets)):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(r)] = 1
    return ids, mask, labels


def _labels(scene_list) -> dict[str, torch.Tensor]:
    """Class indices of every attribute, ``{attribute: LongTensor [n]}``."""
    values = shapes.ATTRIBUTE_VALUES
    return {a: torch.tensor([values[a].index(getattr(s, a)) for s in scene_list]) for a in shapes.ATTRIBUTES}


def foreground_weights(pixels: torch.Tensor) -> torch.Tensor:
    """``[n, patches]``: each patch's share of the image's non-background pixels.

    A small floor keeps every row summable when a shape covers almost nothing.
    """
    bg = torch.tensor([(c / 255.0 - 0.5) / 0.5 for c in shapes.BACKGROUND]).view(1, 3, 1, 1)
    fg = ((pixels - bg).abs().sum(1, keepdim=True) > 0.1).float()
    w = torch.nn.functional.avg_pool2d(fg, PATCH_SIZE).flatten(1) + 1e-3
    return w / w.sum(1, keepdim=True)


class _AttributeProbes(torch.nn.Module):
    """Linear classifiers of the five attributes on the pooled image tokens.

    The image tokens (projected patch features, what the language model reads)
    are averaged with weights proportional to how much of each patch the
    shapes cover, then one linear layer per attribute predicts its class.
    Training the tower through these probes makes every patch that shows a
    shape carry the scene's colour, kind, count, size and position in a
    linearly readable form, which one attention head of the language model
    can then gather by attending to those patches.
    """

    def __init__(self, d_model: int):
        super().__init__()
        sizes = {a: len(v) for a, v in shapes.ATTRIBUTE_VALUES.items()}
        self.heads = torch.nn.ModuleDict({a: torch.nn.Linear(d_model, n) for a, n in sizes.items()})

    def forward(self, features: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = (weights.unsqueeze(-1) * features).sum(1)
        return {a: head(pooled) for a, head in self.heads.items()}


def image_tokens(model, pixels: torch.Tensor, feature_layer: int) -> torch.Tensor:
    """The projected image features ``[n, patches, d_model]``, as LLaVA computes them."""
    out = model.model.vision_tower(pixels, output_hidden_states=True)
    return model.model.multi_modal_projector(out.hidden_states[feature_layer][:, 1:])


def train_shapes_vlm(*, progress: bool = True, settings: dict | None = None):
    """Train ``shapes-vlm`` from scratch on CPU; returns ``(model, processor, log)``.

    Two phases (see :data:`TRAINING`):

    1. the vision tower and projector learn, through linear probes on
       foreground-pooled image tokens, to encode the five attributes
       (``probe_steps`` steps);
    2. the whole model learns to caption and answer (next-token loss on the
       answer words), with the probe loss added (weight ``probe_weight``) so
       that the tower keeps what it learnt (``steps`` steps).

    Trained end to end on captions alone, a model this small stalls at the
    answers' frequencies: a few small shapes on a dark background give the
    language model too weak a signal to learn to look. The probes are thrown
    away after training; the saved model is a plain
    :class:`~transformers.LlavaForConditionalGeneration`.

    Deterministic for a given ``settings`` (default :data:`TRAINING`) and
    thread count. ``log`` has the loss curves of both phases
    (``probe_losses``, ``losses``: the language-model loss alone) and the
    wall time in seconds.
    """
    cfg = {**TRAINING, **(settings or {})}
    with torch_threads(1):
        return _train(cfg, progress)


def cosine_schedule(step: int, total: int, warmup: int, floor: float) -> float:
    """The learning-rate factor at ``step``: linear warm-up, then a cosine from 1 down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _train(cfg: dict, progress: bool):
    t0 = time.perf_counter()
    torch.manual_seed(int(cfg["seed"]))
    rng = np.random.default_rng(int(cfg["seed"]))
    processor = build_processor()
    tok = processor.tokenizer
    feature_layer = int(cfg["feature_layer"])
    model = build_vlm(
        tok, vision=cfg["vision"], text=cfg["text"], feature_layer=feature_layer, seed=int(cfg["seed"])  # type: ignore[arg-type]
    )
    probes = _AttributeProbes(model.config.text_config.hidden_size)
    model.train()
    pool = shapes.scenes(int(cfg["train_scenes"]), seed=int(cfg["scene_seed"]))
    pixels = scene_pixel_values(pool)
    labels_of = _labels(pool)
    fg = foreground_weights(pixels)

    def probe_loss(idx: torch.Tensor) -> torch.Tensor:
        logits = probes(image_tokens(model, pixels[idx], feature_layer), fg[idx])
        return sum(torch.nn.functional.cross_entropy(logits[a], labels_of[a][idx]) for a in logits)  # type: ignore[return-value]

    question_tasks = list(shapes.ATTRIBUTES)

    def answers(batch_size: int) -> AnswerBatch:
        idx = rng.integers(len(pool), size=batch_size)
        is_caption = rng.random(batch_size) < float(cfg["caption_fraction"])
        q = rng.integers(len(question_tasks), size=batch_size)
        tasks = ["caption" if c else question_tasks[j] for c, j in zip(is_caption, q)]
        ids, mask, labels = _examples(tok, [pool[i] for i in idx], tasks)
        rows = torch.as_tensor(idx)
        return AnswerBatch(ids, mask, labels, pixels[rows], lambda: probe_loss(rows))

    log = train_with_probes(
        model, probes, cfg, probe_step=lambda n: probe_loss(torch.as_tensor(rng.integers(len(pool), size=n))),
        answers=answers, desc=("shapes-vlm 1/2: vision tower", "shapes-vlm 2/2: captions and answers"),
        progress=progress,
    )
    model.eval()
    return model, processor, {**log, "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}


@dataclass(frozen=True)
class AnswerBatch:
    """One batch of phase 2 of :func:`train_with_probes`: the model's inputs and the probe loss on its images."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    probe_loss: Callable[[], torch.Tensor]


def _optimise(opt, sched, loss: torch.Tensor, clip: torch.nn.Module | None = None) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
    opt.step()
    sched.step()
    return float(loss.detach())


def train_with_probes(model, probes: torch.nn.Module, cfg: dict, *, probe_step: Callable[[int], torch.Tensor],
                      answers: Callable[[int], AnswerBatch], desc: tuple[str, str], progress: bool = True) -> dict:
    """Train a from-scratch LLaVA of :func:`build_vlm` in two phases, on any data set; in place.

    1. The vision tower and projector alone, through linear ``probes`` on the
       image tokens (``cfg["probe_steps"]`` steps of ``probe_step(batch_size)``,
       which returns the probe loss of a fresh batch).
    2. The whole model on the answers (``cfg["steps"]`` steps of
       ``answers(batch_size)``), its next-token loss plus ``cfg["probe_weight"]``
       times the probe loss on the same images, so that the tower keeps what it learnt.

    Parameters
    ----------
    model : LlavaForConditionalGeneration
        From :func:`build_vlm`, in train mode.
    probes : torch.nn.Module
        The probes (trained with the tower, thrown away afterwards).
    cfg : dict
        The recipe: ``probe_steps``, ``probe_batch_size``, ``probe_lr``, ``steps``,
        ``batch_size``, ``lr``, ``vision_lr``, ``weight_decay``, ``warmup``, ``probe_weight``.
    probe_step, answers : callable
        The data set, drawn in order (a seeded data set makes training deterministic).
    desc : (str, str)
        The two phases' progress-bar labels.
    progress : bool, default True

    Returns
    -------
    dict
        ``probe_losses`` (phase 1) and ``losses`` (phase 2, the language-model loss alone), one per step.
    """
    from tqdm.auto import tqdm

    vision_params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(),
                     *probes.parameters()]
    p_steps, p_bs = int(cfg["probe_steps"]), int(cfg["probe_batch_size"])
    opt = torch.optim.AdamW(vision_params, lr=float(cfg["probe_lr"]), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, p_steps, 50, 0.1))
    probe_losses: list[float] = []
    for step in (bar := tqdm(range(p_steps), desc=desc[0], leave=False, disable=not progress)):
        probe_losses.append(_optimise(opt, sched, probe_step(p_bs)))
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(probe_losses[-50:]):.3f}")
    steps, bs = int(cfg["steps"]), int(cfg["batch_size"])
    vision_ids = {id(p) for p in vision_params}
    lm_params = [p for p in model.parameters() if id(p) not in vision_ids]
    opt = torch.optim.AdamW(
        [{"params": lm_params, "lr": float(cfg["lr"])}, {"params": vision_params, "lr": float(cfg["vision_lr"])}],
        betas=(0.9, 0.98), weight_decay=float(cfg["weight_decay"]),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, steps, int(cfg["warmup"]), 0.02))
    weight = float(cfg["probe_weight"])
    losses: list[float] = []
    for step in (bar := tqdm(range(steps), desc=desc[1], leave=False, disable=not progress)):
        b = answers(bs)
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, pixel_values=b.pixel_values,
                    labels=b.labels)
        _optimise(opt, sched, out.loss + weight * b.probe_loss() if weight > 0 else out.loss, clip=model)
        losses.append(float(out.loss.detach()))
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    return {"losses": losses, "probe_losses": probe_losses}


# --------------------------------------------------------------------------- #
# Asking and describing
# --------------------------------------------------------------------------- #


def ask(model, processor, images, attribute: str, *, batch_size: int = 64) -> list[str]:
    """The model's one-word answers to the question about ``attribute``, one per image.

    ``attribute`` is one of :data:`hp_mini.vision.shapes.ATTRIBUTES`. Greedy,
    one new token, through :func:`hp_mini.generate` (so head edits apply).
    """
    from hp_mini.edit.generation import generate

    if attribute not in shapes.QUESTIONS:
        raise ValueError(f"attribute must be one of {list(shapes.QUESTIONS)}, got {attribute!r}")
    prompt = question_prompt(shapes.QUESTIONS[attribute])
    return generate(model, processor, [prompt] * len(images), images=list(images), max_new_tokens=1,
                    batch_size=batch_size)


def describe(model, processor, images, *, max_new_tokens: int = 10, batch_size: int = 64) -> list[str]:
    """The model's captions, one per image (greedy, through :func:`hp_mini.generate`)."""
    from hp_mini.edit.generation import generate

    return generate(model, processor, [CAPTION_PROMPT] * len(images), images=list(images),
                    max_new_tokens=max_new_tokens, batch_size=batch_size)


# --------------------------------------------------------------------------- #
# Loading (train once, then cache)
# --------------------------------------------------------------------------- #


def _cache_path() -> Path:
    recipe = {**TRAINING, "scenes": shapes.GENERATOR_VERSION, "patch": PATCH_SIZE, "words": _words()}
    key = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / f"shapes-vlm-{key}"


def load_shapes_vlm(*, dtype: torch.dtype = torch.float32, device="cpu", progress: bool = True):
    """Load ``shapes-vlm`` from the cache, training it first if it is not there.

    Returns ``(model, processor)``; ``model.config.hp_mini_training`` holds
    the training wall time (seconds) of the cached weights and the number of
    steps of each phase (``probe_steps``, then ``steps``). The cached folder
    is checked against its manifest and rebuilt when damaged; the model is
    built from :data:`TRAINING`'s configuration (:func:`read_cached_vlm`).
    """

    model, processor = load_trained_vlm(_cache_path(), train_shapes_vlm, build_tokenizer, TRAINING,
                                        what="shapes-vlm", dtype=dtype, progress=progress)
    return model.to(device).eval(), processor


def load_trained_vlm(folder: Path, train: Callable, tokenizer: Callable, settings: dict, *, what: str,
                     dtype: torch.dtype = torch.float32, progress: bool = True, source: Callable | None = None):
    """A from-scratch LLaVA read from the cache ``folder``, trained there first when needed.

    Parameters
    ----------
    folder : pathlib.Path
        The cache folder (its name carries the recipe's hash).
    train : callable ``(progress=...) -> (model, processor, log)``
        Trains the model from its recipe (:func:`train_shapes_vlm`, say).
    tokenizer : callable ``() -> tokenizer``
        Builds the model's tokenizer (:func:`build_tokenizer`, say).
    settings : dict
        The recipe the cached model must have been trained with.
    what : str
        The model's name, for messages.
    dtype, progress
        As for :func:`hp_mini.load_model`.
    source : callable, optional
        Checks that the training data is there before training (see
        :func:`hp_mini.model.cache.load_cached`).

    Returns
    -------
    (LlavaForConditionalGeneration, processor)
    """

    def fill(tmp: Path) -> None:
        model, processor, log = train(progress=progress)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "training_log.json").write_text(json.dumps({**log, "settings": settings}))

    def announce(msg: str) -> None:
        print(msg + " training on CPU, a few minutes", flush=True)

    return load_cached(
        folder, fill, lambda cached: read_cached_vlm(cached, tokenizer(), settings, dtype=dtype), source=source,
        what=what, announce=announce if progress else None,
    )


_UNCHECKED_CONFIG_KEYS = ("architectures", "dtype", "torch_dtype", "transformers_version")


def read_cached_vlm(folder: Path, tokenizer, settings: dict, *, dtype: torch.dtype = torch.float32):
    """Read a cached LLaVA of :func:`build_vlm` from ``folder``; raise when it is not the expected one.

    The model is built from the configuration that ``settings`` and
    ``tokenizer`` give (:func:`build_vlm`), never from the folder's
    ``config.json``, which must describe the same model; every weight must be
    in the folder with its shape, and the saved tokenizer must have
    ``tokenizer``'s vocabulary.

    Parameters
    ----------
    folder : pathlib.Path
        Written by ``save_pretrained`` of the model and the processor, with ``training_log.json``.
    tokenizer
        The expected tokenizer (:func:`build_tokenizer`, or a model's own).
    settings : dict
        Holds ``"vision"``, ``"text"`` and ``"feature_layer"``, as :data:`TRAINING` does.
    dtype : torch.dtype, default torch.float32

    Returns
    -------
    (transformers.LlavaForConditionalGeneration, transformers.LlavaProcessor)
        On the CPU; ``model.config.hp_mini_training`` as :func:`load_shapes_vlm` describes.

    Raises
    ------
    ValueError
        When the configuration, the weights or the vocabulary are not the expected ones.
    """
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    with torch.random.fork_rng(devices=[]):  # build_vlm seeds the generator
        expected = build_vlm(tokenizer, vision=settings["vision"], text=settings["text"],
                             feature_layer=int(settings["feature_layer"])).config
    want = json.loads(expected.to_json_string(use_diff=True))
    found = json.loads((folder / "config.json").read_text())
    if not isinstance(found, dict):
        raise ValueError(f"its config.json holds a JSON {type(found).__name__}, not a configuration")
    differ = sorted(k for k in set(want) | set(found)
                    if k not in _UNCHECKED_CONFIG_KEYS and want.get(k) != found.get(k))
    if differ:
        raise ValueError(f"its config.json does not describe the expected model (it differs in {differ[:6]})")
    # trust_remote_code explicit: never ask on standard input, never run a folder's own code
    model, info = LlavaForConditionalGeneration.from_pretrained(
        folder, config=expected, dtype=dtype, trust_remote_code=False, output_loading_info=True
    )
    wrong = {kind: sorted(map(str, keys))[:4] for kind, keys in info.items() if keys}
    if wrong:
        raise ValueError(f"its weights do not fit the expected model ({wrong})")
    processor = LlavaProcessor.from_pretrained(folder, trust_remote_code=False)
    if processor.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError("its tokenizer has another vocabulary than the expected one")
    log = json.loads((folder / "training_log.json").read_text())
    model.config.hp_mini_training = {
        "seconds": log["seconds"],
        "steps": len(log["losses"]),
        "probe_steps": len(log.get("probe_losses", [])),
    }
    return model, processor


def training_log() -> dict:
    """The training log of the cached model (loss curve, seconds), training it if needed."""
    load_shapes_vlm(progress=False)
    return json.loads((_cache_path() / "training_log.json").read_text())

