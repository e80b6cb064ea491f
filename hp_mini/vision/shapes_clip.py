"""``shapes-clip``: a small open_clip CLIP trained from scratch on the shapes scenes.

``hp_mini.load_model("shapes-clip")`` (:func:`load_shapes_clip`) builds an
``open_clip.CLIP`` (ViT image tower, 4 layers x 8 heads of width 12 on 6 x 6
patches; a 2-layer text tower with the word-level :class:`WordTokenizer`),
trains it contrastively on the scenes of :mod:`hp_mini.vision.shapes` on the
first call (a few minutes at most on a CPU; ``benchmarks/shapes_clip.py``
measures it) and caches it under :func:`hp_mini.model.cache.cache_dir` (through
:func:`hp_mini.model.cache.load_cached`: checked against its manifest on each load,
rebuilt when damaged); later calls read the cache. The model is always built
from the expected recipe, never from the cached ``config.json``
(:func:`read_cached_clip`). The image encoder's heads come split
(:func:`hp_mini.model.open_clip.split_heads`), so
:func:`hp_mini.attention_heads` and :func:`hp_mini.scale_heads` work on it.

Each training step pairs every image with a random partial description of it
(:func:`hp_mini.vision.scene_prompts.describe`), so that one-attribute prompts
such as "red shapes" are in the model's language.

Example
-------
>>> import hp_mini
>>> model, processor = hp_mini.load_model("shapes-clip")           # doctest: +SKIP
>>> processor.tokenizer(["red shapes"]).shape                       # doctest: +SKIP
torch.Size([1, 12])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hp_mini.model.cache import cache_dir, load_cached
from hp_mini.model.open_clip import split_heads
from hp_mini.vision.contrastive import train_contrastive
from hp_mini.vision.scene_prompts import describe
from hp_mini.vision.shapes import ATTRIBUTE_VALUES, IMAGE_SIZE, render_scene, scene_pixels, scenes, vocabulary

__all__ = [
    "ShapesCLIPConfig",
    "ShapesCLIPProcessor",
    "WordTokenizer",
    "build_shapes_clip",
    "cache_name",
    "load_shapes_clip",
    "read_cached_clip",
    "train_shapes_clip",
]

# The attributes in the order of the training codes (part of what the recipe produces).
_ATTRS = ("count", "size", "colour", "shape", "position")


class WordTokenizer:
    """A word-level tokenizer for open_clip's text tower.

    Ids: ``0`` padding, ``1`` start, words ``2..``, and the end token last, so
    that open_clip's ``argmax`` pooling (the end token has the largest id)
    reads the end of each text. Unknown words map to ``<unk>``.
    """

    def __init__(self, words: Sequence[str], context_length: int = 12):
        self.words = list(words)
        self.context_length = context_length
        self.vocab = ["<pad>", "<sot>", "<unk>", *self.words, "<eot>"]
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids = [self.index["<sot>"], *(self.index.get(w, 2) for w in text.lower().split()), self.index["<eot>"]]
        if len(ids) > self.context_length:
            raise ValueError(f"{text!r} has {len(ids)} tokens; the context holds {self.context_length}")
        return ids

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """``[n, context_length]`` token ids, right-padded with 0."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.encode(t)
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids) -> str:
        return " ".join(self.vocab[int(i)] for i in ids if int(i) > 2 and self.vocab[int(i)] != "<eot>")


class ShapesCLIPProcessor:
    """The image transform and the tokenizer of ``shapes-clip``, in one object.

    ``processor(images=[...], text=[...])`` returns ``{"image": [n, 3, H, W],
    "text": [m, context_length]}``, ready for ``model(**batch)``.
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self, tokenizer: WordTokenizer):
        self.tokenizer = tokenizer

    def image_transform(self, image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]

    def pixels(self, array: np.ndarray) -> torch.Tensor:
        """``uint8 [n, H, W, 3]`` -> normalised ``[n, 3, H, W]``."""
        x = torch.from_numpy(array).float().div_(255.0).permute(0, 3, 1, 2)
        return (x - torch.tensor(self.mean)[:, None, None]) / torch.tensor(self.std)[:, None, None]

    def __call__(self, *, images=None, text=None) -> dict[str, torch.Tensor]:
        out = {}
        if images is not None:
            out["image"] = torch.stack([self.image_transform(im) for im in images])
        if text is not None:
            out["text"] = self.tokenizer(text)
        return out


_CACHE_PREFIX = "shapes-clip"


@dataclass(frozen=True)
class ShapesCLIPConfig:
    """Architecture and training recipe of ``shapes-clip`` (part of the cache key)."""

    embed_dim: int = 64
    vision_layers: int = 4
    vision_width: int = 96
    head_width: int = 12
    patch_size: int = 8
    text_layers: int = 2
    text_width: int = 64
    text_heads: int = 4
    mlp_ratio: float = 2.0
    context_length: int = 12
    n_train: int = 6000
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.05
    p_full_caption: float = 0.3
    seed: int = 0


def build_shapes_clip(config: ShapesCLIPConfig = ShapesCLIPConfig(), *, split: bool = True,
                      words: Sequence[str] | None = None):
    """An untrained ``shapes-clip``: ``(open_clip.CLIP, ShapesCLIPProcessor)``.

    With ``split=True`` (default) the image encoder's heads are already split
    (:func:`~hp_mini.model.open_clip.split_heads`); ``split=False`` gives open_clip's model as it comes.
    ``words`` is the text tower's vocabulary (default: the scenes' words,
    :func:`hp_mini.vision.shapes.vocabulary`).
    """
    import open_clip

    tokenizer = WordTokenizer(vocabulary() if words is None else list(words), config.context_length)
    vision = open_clip.CLIPVisionCfg(
        layers=config.vision_layers,
        width=config.vision_width,
        head_width=config.head_width,
        mlp_ratio=config.mlp_ratio,
        patch_size=config.patch_size,
        image_size=IMAGE_SIZE,
    )
    text = open_clip.CLIPTextCfg(
        context_length=config.context_length,
        vocab_size=tokenizer.vocab_size,
        width=config.text_width,
        heads=config.text_heads,
        layers=config.text_layers,
        mlp_ratio=config.mlp_ratio,
    )
    torch.manual_seed(config.seed)
    model = open_clip.CLIP(config.embed_dim, vision, text)
    if split:
        split_heads(model)
    return model, ShapesCLIPProcessor(tokenizer)


def _partial_captions(attrs: np.ndarray, rng: np.random.Generator, p_full: float) -> tuple[list[str], np.ndarray]:
    """A random description per scene: each attribute kept with probability 1/2 (at least one)."""
    n = attrs.shape[0]
    keep = rng.random((n, len(_ATTRS))) < 0.5
    keep[rng.random(n) < p_full] = True
    empty = ~keep.any(1)
    keep[empty, rng.integers(len(_ATTRS), size=int(empty.sum()))] = True
    values = ATTRIBUTE_VALUES
    texts = []
    for i in range(n):
        kw = {a: values[a][attrs[i, j]] for j, a in enumerate(_ATTRS) if keep[i, j]}
        texts.append(describe(**kw))
    return texts, keep


def _attribute_codes(rows) -> np.ndarray:
    values = ATTRIBUTE_VALUES
    return np.array([[values[a].index(r[a]) for a in _ATTRS] for r in rows], dtype=np.int64)


def train_shapes_clip(config: ShapesCLIPConfig = ShapesCLIPConfig(), *, progress: bool = True):
    """Train ``shapes-clip`` from scratch; returns ``(model, processor, seconds)``.

    Contrastive training on ``config.n_train`` scenes of seed 0. Each step
    pairs every image with a random partial description of it ("red shapes",
    "three small circles", or the full caption). Because a description such as
    "red shapes" fits many images in a batch, the targets of the contrastive
    loss are all matching pairs (uniform over them), not only the diagonal.
    """
    model, processor = build_shapes_clip(config)
    items = scenes(config.n_train, seed=config.seed)
    pixels = processor.pixels(scene_pixels([render_scene(s) for s in items]))
    codes = _attribute_codes([s.attributes() for s in items])
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)

    def draw(step: int):
        idx = torch.randint(0, config.n_train, (config.batch_size,), generator=gen)
        a = codes[idx.numpy()]
        texts, keep = _partial_captions(a, rng, config.p_full_caption)
        # image i matches text j when every attribute text j mentions agrees with image i
        agree = (a[:, None, :] == a[None, :, :]) | ~keep[None, :, :]
        return pixels[idx], texts, torch.from_numpy(agree.all(-1)).float()

    seconds = train_contrastive(model, processor.tokenizer, draw, config, desc="training shapes-clip",
                                progress=progress)
    return model, processor, seconds


def cache_name(config: ShapesCLIPConfig = ShapesCLIPConfig()) -> str:
    """The cache folder of a recipe: ``shapes-clip-<hash of the recipe and open_clip's version>``."""
    import hashlib

    import open_clip

    key = json.dumps({"recipe": asdict(config), "open_clip": open_clip.__version__}, sort_keys=True)
    return f"{_CACHE_PREFIX}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def load_shapes_clip(*, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", progress: bool = True):
    """``shapes-clip``: trained on the first call, then read from the cache.

    Parameters
    ----------
    dtype, device
        Where and how to hold the weights.
    progress : bool
        Show a message and a progress bar while training.

    Returns
    -------
    model : open_clip.CLIP
        In eval mode, its image encoder's heads split; ``model.train_seconds``
        is how long training took when the cache was filled.
    processor : ShapesCLIPProcessor
        The image transform and the tokenizer.
    """
    from safetensors.torch import save_file

    config = ShapesCLIPConfig()

    def fill(tmp: Path) -> None:
        model, processor, seconds = train_shapes_clip(config, progress=progress)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta = {"config": asdict(config), "vocab": processor.tokenizer.words, "train_seconds": seconds}
        (tmp / "config.json").write_text(json.dumps(meta, indent=1))

    model, processor = load_cached(
        cache_dir() / cache_name(config), fill, lambda folder: read_cached_clip(folder, config),
        what="shapes-clip",
        announce=(lambda msg: print(msg + " training on CPU, a few minutes at most", flush=True)) if progress else None,
    )
    return model.to(device=device, dtype=dtype).eval(), processor


def read_cached_clip(folder: Path, config: ShapesCLIPConfig, words: Sequence[str] | None = None):
    """Read a cached CLIP of :func:`build_shapes_clip` from ``folder``; raise when it is not the expected one.

    The model is built from ``config`` (never from the folder's ``config.json``,
    which must describe the same recipe), and its weights must fit it exactly.

    Parameters
    ----------
    folder : pathlib.Path
        Holds ``config.json`` (the recipe, the vocabulary, the training time) and ``model.safetensors``.
    config : ShapesCLIPConfig
        The recipe the model must have been trained with.
    words : sequence of str, optional
        The vocabulary, as for :func:`build_shapes_clip`.

    Returns
    -------
    (open_clip.CLIP, ShapesCLIPProcessor)
        On the CPU, in float32; ``model.train_seconds`` is the recorded training time.

    Raises
    ------
    ValueError
        When ``config.json`` describes another recipe or vocabulary.
    """
    from safetensors.torch import load_file

    meta = json.loads((folder / "config.json").read_text())
    if not isinstance(meta, dict) or meta.get("config") != asdict(config):
        found = meta.get("config") if isinstance(meta, dict) else meta
        raise ValueError(f"its config.json describes the recipe {found!r}, not the expected {asdict(config)!r}")
    model, processor = build_shapes_clip(config, words=words)
    if "vocab" in meta and meta["vocab"] != processor.tokenizer.words:
        raise ValueError("its config.json lists another vocabulary than the model's")
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    model.train_seconds = meta.get("train_seconds")
    return model, processor
