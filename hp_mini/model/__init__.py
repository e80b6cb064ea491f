"""Step 0, the model: load it, and know where everything is inside it.

- :mod:`~hp_mini.model.loading`: :func:`load_model` by name (the embedded models,
  a GGUF file, a transformers folder, a Hugging Face id, a registered loader).
- :mod:`~hp_mini.model.gguf`, :mod:`~hp_mini.model.cache`: GGUF conversion, and
  the cache of converted and trained models (atomic, checked, locked).
- :mod:`~hp_mini.model.architectures`: one declaration per model family
  (:func:`register_architecture` adds one; open_clip's CLIP is declared there too,
  through :mod:`~hp_mini.model.open_clip`).
- :mod:`~hp_mini.model.sites`, :mod:`~hp_mini.model.heads`: the heads of each
  layer (:class:`LayerHeads`, :func:`attention_heads`) and their names.
- :mod:`~hp_mini.model.hooks` (:class:`Trace`, the one hook mechanism) and
  :mod:`~hp_mini.model.inputs` (prompts and images into a batch).
"""

from __future__ import annotations

from hp_mini.model.architectures import ModelParts, model_parts, register_architecture
from hp_mini.model.heads import attention_heads, check_heads_of
from hp_mini.model.hooks import Trace
from hp_mini.model.loading import load_model, model_names, prepare_model, register_model
from hp_mini.model.sites import Head, LayerHeads, head_label, parse_head_label

__all__ = ["attention_heads", "check_heads_of", "Head", "head_label", "LayerHeads", "load_model", "model_names", "model_parts", "ModelParts", "parse_head_label", "prepare_model", "register_architecture", "register_model", "Trace"]
