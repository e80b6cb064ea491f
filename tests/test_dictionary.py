"""Concept word lists and the unembedding dictionary."""

from __future__ import annotations

from importlib import resources

import pytest
import torch

import hp_mini
from helpers import tiny_model

EXPECTED = {"animals", "colours", "countries", "months", "nationalities", "numbers", "weekdays"}


def test_concept_lists_ship_with_a_source_note_and_no_duplicates():
    assert EXPECTED <= set(hp_mini.concept_names())
    for name in hp_mini.concept_names():
        text = (resources.files("hp_mini") / "data" / "concepts" / f"{name}.txt").read_text()
        assert text.startswith("#"), name
        assert "CC0" in text.split("\n")[0] or "licen" in text.lower(), name
        words = hp_mini.concept_words(name)
        assert words and len(words) == len(set(words)), name
        assert not any(w.startswith("#") or w != w.strip() for w in words)
    assert hp_mini.concept_words("months")[0] == "January" and len(hp_mini.concept_words("months")) == 12
    assert "France" in hp_mini.concept_words("countries") and len(hp_mini.concept_words("countries")) >= 190
    with pytest.raises(ValueError, match="available: animals"):
        hp_mini.concept_words("planets")


class TableTokenizer:
    """A tokenizer with a fixed table of encodings, to pin down the word policy."""

    table = {
        " France": [5], "France": [6],
        " Chad": [7], "Chad": [7, 8],
        " New Zealand": [9, 10], "New Zealand": [11, 10],
        " Netherlands": [12, 13], "Netherlands": [14, 13],
        " Gaul": [5],  # same token as " France": deduplicated
    }
    names = {5: " France", 6: "France", 7: " Chad", 8: "d", 9: " New", 10: " Zealand",
             11: "New", 12: " Nether", 13: "lands", 14: "Ne"}

    def encode(self, text, add_special_tokens=False):
        return list(self.table.get(text, []))

    def decode(self, ids):
        return "".join(self.names.get(int(i), f"<{int(i)}>") for i in ids)

    def batch_decode(self, rows):
        return [self.decode(r) for r in rows]


def test_word_policy_on_a_tiny_model():
    model = tiny_model("llama")  # vocabulary of 97
    tok = TableTokenizer()
    dic = hp_mini.unembedding_dictionary(model, tok, ["France", "Chad", "New Zealand", "Netherlands", "Gaul", "Atlantis"])
    assert dic.token_ids.tolist() == [5, 6, 7, 12]
    assert dic.labels == [" France", "France", " Chad", " Nether"]
    assert dic.words == ["France", "France", "Chad", "Netherlands"]
    assert dic.missing == ["New Zealand", "Atlantis"]
    assert set(dic.multi_token) == {"Chad", " New Zealand", "New Zealand", " Netherlands", "Netherlands"}
    assert dic.multi_token[" Netherlands"] == [" Nether", "lands"]
    assert dic.kept_first == ["Chad", " Netherlands"]  # "Ne" is too short to stand for "Netherlands"
    W = model.get_output_embeddings().weight.detach()
    torch.testing.assert_close(dic.atoms, torch.nn.functional.normalize(W[[5, 6, 7, 12]], dim=1))
    torch.testing.assert_close(dic.atoms.norm(dim=1), torch.ones(4))

    drop = hp_mini.unembedding_dictionary(model, tok, ["France", "Netherlands"], multi_token="drop", normalize=False)
    assert drop.token_ids.tolist() == [5, 6] and drop.missing == ["Netherlands"]
    torch.testing.assert_close(drop.atoms, W[[5, 6]])
    with pytest.raises(ValueError, match="none of the words"):
        hp_mini.unembedding_dictionary(model, tok, ["Atlantis"])
    with pytest.raises(TypeError, match="list of words"):
        hp_mini.unembedding_dictionary(model, tok, "France")


def test_words_the_tokenizer_does_not_know_are_left_out_with_a_warning():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = ["<unk>", "France", "Chad", "Gallia", "New"]
    raw = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    raw.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    model = tiny_model("llama")
    # "Gallia Nova" splits into [Gallia, <unk>]: its first piece would otherwise stand for it
    with pytest.warns(RuntimeWarning, match=r"unknown token '<unk>'.*\['Atlantis', 'Gallia Nova'\]") as caught:
        dic = hp_mini.unembedding_dictionary(model, tok, ["France", "Atlantis", "Chad", "Gallia Nova"])
    assert caught[0].filename == __file__, "the warning points at the caller's line"
    assert dic.token_ids.tolist() == [1, 2] and dic.words == ["France", "Chad"]
    assert dic.missing == ["Atlantis", "Gallia Nova"]
    with pytest.warns(RuntimeWarning, match="Atlantis"), pytest.raises(ValueError, match="none of the words"):
        hp_mini.unembedding_dictionary(model, tok, ["Atlantis"])


def test_full_vocabulary_and_final_norm_on_a_tiny_model():
    model = tiny_model("llama")
    tok = TableTokenizer()
    full = hp_mini.unembedding_dictionary(model, tok, normalize=False)
    W = model.get_output_embeddings().weight.detach()
    torch.testing.assert_close(full.atoms, W)
    assert full.token_ids.tolist() == list(range(97)) and full.labels[5] == " France"
    folded = hp_mini.unembedding_dictionary(model, tok, normalize=False, final_norm=True)
    gamma = model.model.norm.weight.detach()
    torch.testing.assert_close(folded.atoms, W * gamma)
    # The folded atoms give the logits of the normalised residual, up to 1/rms(x).
    x = torch.randn(3, W.shape[1])
    with torch.no_grad():
        logits = model.lm_head(model.model.norm(x))
    rms = x.square().mean(-1, keepdim=True).add(model.config.rms_norm_eps).sqrt()
    torch.testing.assert_close(logits, (x / rms) @ folded.atoms.T, rtol=1e-4, atol=1e-5)


def test_plain_matrix_dictionary():
    dic = hp_mini.read.dictionary.as_dictionary(torch.eye(3))
    assert dic.labels == ["0", "1", "2"] and len(dic) == 3 and dic.d_model == 3
    with pytest.raises(ValueError, match=r"\[v, d\]"):
        hp_mini.read.dictionary.as_dictionary(torch.ones(3))
    with pytest.raises(ValueError, match="labels"):
        hp_mini.Dictionary(torch.eye(3), ["a"])


@pytest.mark.slow
def test_smollm2_dictionaries(smollm2):
    model, tok = smollm2
    full = hp_mini.unembedding_dictionary(model, tok)
    assert full.atoms.shape == (49152, 576)
    W = model.get_output_embeddings().weight.detach().float()
    torch.testing.assert_close(full.atoms[1234], W[1234] / W[1234].norm())
    months = hp_mini.unembedding_dictionary(model, tok, hp_mini.concept_words("months"))
    assert " January" in months.labels and "January" in months.labels
    assert not months.missing
    for i, label in zip(months.token_ids.tolist(), months.labels):
        assert tok.decode([i]) == label
    countries = hp_mini.unembedding_dictionary(model, tok, hp_mini.concept_words("countries"))
    assert len(set(countries.token_ids.tolist())) == len(countries)
    assert " France" in countries.labels and countries.multi_token  # some names split
    assert set(countries.missing) <= set(hp_mini.concept_words("countries"))
    folded = hp_mini.unembedding_dictionary(model, tok, ["France"], final_norm=True, normalize=False)
    gamma = model.model.norm.weight.detach().float()
    ids = folded.token_ids
    torch.testing.assert_close(folded.atoms, W[ids] * gamma)


def test_random_atoms_draws_without_replacement_from_the_pool():
    from hp_mini.read.dictionary import Dictionary, random_atoms

    atoms = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    full = Dictionary(atoms, [f"t{i}" for i in range(20)], torch.arange(100, 120))
    among = torch.tensor([2, 3, 5, 7, 11, 13])
    drawn = random_atoms(full, 4, among=among, seed=1)
    positions = (drawn.token_ids - 100).tolist()
    assert len(set(positions)) == 4 and set(positions) <= set(among.tolist())
    assert drawn.labels == [f"t{i}" for i in positions]
    assert torch.equal(drawn.atoms, atoms[positions])
    # the same seed, the same draw; a shared generator gives a different second draw
    assert random_atoms(full, 4, among=among, seed=1).labels == drawn.labels
    gen = torch.Generator().manual_seed(1)
    first, second = random_atoms(full, 4, among=among, generator=gen), random_atoms(full, 4, among=among, generator=gen)
    assert first.labels == drawn.labels and second.labels != first.labels
    # the oracle: the first `size` entries of a permutation of the pool
    perm = torch.randperm(len(among), generator=torch.Generator().manual_seed(1))
    assert positions == among[perm[:4]].tolist()


def test_random_atoms_rejects_bad_sizes_and_pools():
    from hp_mini.read.dictionary import Dictionary, random_atoms

    full = Dictionary(torch.zeros(5, 2), list("abcde"))
    with pytest.raises(ValueError, match="from 1 to 5"):
        random_atoms(full, 6)
    with pytest.raises(ValueError, match="from 1 to 2"):
        random_atoms(full, 3, among=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        random_atoms(full, 1, among=torch.tensor([9]))
    with pytest.raises(ValueError, match="integer"):
        random_atoms(full, 1.5)
    assert random_atoms(full, 2).token_ids is None


def test_copy_scores_takes_the_old_keyword_texts_with_a_deprecation_warning():
    import warnings

    from helpers import CharTokenizer
    from hp_mini.read.copying import copy_scores

    model = tiny_model("llama")
    U = torch.randn(model.config.vocab_size, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    new = copy_scores(model, CharTokenizer(), prompts=["abcd", "efgh"], unembedding=U, batch_size=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = copy_scores(model, CharTokenizer(), texts=["abcd", "efgh"], unembedding=U, batch_size=1)
    assert [w.category for w in caught] == [DeprecationWarning]
    assert "'texts' is now called 'prompts'; write prompts=" in str(caught[0].message)
    assert caught[0].filename == __file__
    assert torch.equal(old.scores, new.scores) and torch.equal(old.baseline, new.baseline)
    with pytest.raises(TypeError, match="give prompts= only"):
        copy_scores(model, CharTokenizer(), texts=["abcd"], prompts=["abcd"], unembedding=U)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        copy_scores(model, CharTokenizer(), ["abcd"], U, batch_size=2.5)
