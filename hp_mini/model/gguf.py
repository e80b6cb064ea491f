"""GGUF files: find them, and convert them once into a cached transformers model.

A GGUF file holds quantised weights and the tokenizer. transformers reads it
(``from_pretrained(..., gguf_file=...)``) and dequantises it, which takes tens
of seconds; :func:`convert_gguf` does that once and saves float32 safetensors
with the tokenizer, so later loads take seconds.

Example
-------
>>> from hp_mini.model.gguf import convert_gguf
>>> convert_gguf("model.gguf", "converted/")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["GGUF_MAGIC", "convert_gguf", "find_gguf", "gguf_cache_name", "is_gguf"]

GGUF_MAGIC = b"GGUF"
"""The first four bytes of every GGUF file."""


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def find_gguf(folder: str | os.PathLike) -> Path | None:
    """The one ``.gguf`` file in ``folder`` (not its subfolders), or ``None`` when there is none.

    Raises
    ------
    ValueError
        When the folder holds several GGUF files: pass the one you mean.
    """
    found = sorted(p for p in Path(folder).glob("*.gguf") if p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ValueError(
            f"load_model: name={str(folder)!r} holds {len(found)} GGUF files ({names}); pass the path of one"
        )
    return found[0] if found else None


def gguf_cache_name(path: str | os.PathLike) -> str:
    """The cache folder name of a GGUF file: its stem and a key of its path, size and time.

    A file replaced in place gets a new key, so its conversion is redone.
    """
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha1(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
    return f"gguf-{path.stem}-{key}"


def convert_gguf(gguf: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Dequantise a GGUF causal language model and save it with its tokenizer.

    Parameters
    ----------
    gguf : str or path-like
        The GGUF file (an architecture transformers can read from GGUF:
        llama, mistral, qwen2/3, gemma2/3, phi3, ...).
    out : str or path-like
        An existing folder; ``config.json``, ``model.safetensors`` (float32) and
        the tokenizer files are written into it.

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, out = Path(gguf), Path(out)
    if not is_gguf(gguf):
        raise ValueError(f"load_model: {str(gguf)!r} is not a GGUF file (it does not start with {GGUF_MAGIC!r})")
    try:
        # trust_remote_code explicit: never ask on standard input, never run a folder's own code
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     trust_remote_code=False)
    except (ValueError, KeyError, IndexError, OSError) as err:
        raise ValueError(
            f"load_model: transformers could not read the GGUF file {str(gguf)!r} ({err.__class__.__name__}: "
            f"{err}). It may be damaged, or hold an architecture that transformers cannot load from GGUF "
            f"(see transformers' GGUF documentation); convert it with llama.cpp's tools, or load the "
            f"original model instead."
        ) from err
    # The weights are dequantised floats now: drop the GGUF quantisation marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf.stem
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
