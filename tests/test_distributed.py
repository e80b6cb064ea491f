"""hp_mini.parallel: prompts and heads shared out over processes give one process's results.

The 2-process test launches ``torchrun --nproc_per_node=2`` on CPU (gloo) on a
tiny random Llama saved to a temporary folder, and compares rank 0's outputs
with a plain one-process run of the same command.
"""

from __future__ import annotations

import csv
import datetime
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
from helpers import concept_prompts, save_tiny_llama
from hp_mini.record.activations import HeadActivations
from hp_mini.parallel import DistContext, exchange_status, init_distributed
from hp_mini.record.stream import interleave_batches, record_stream
from hp_mini.rank.distributed import rank_heads_distributed, shard_heads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return hp_mini.load_model(str(tiny_folder))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def read_ranking(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- #
# Two processes on CPU (gloo) against one
# --------------------------------------------------------------------------- #


_BOTH_COMMANDS = """
import sys
from hp_mini.cli import main
from hp_mini.parallel import init_distributed, shutdown_distributed

out, rank_args, edit_args = sys.argv[1], sys.argv[2].split("|"), sys.argv[3].split("|")
ctx = init_distributed()  # one process group for both commands
assert main(rank_args + ["--out", out + "/rank"]) == 0
assert main(edit_args + ["--ranking", out + "/rank/ranking.csv", "--out", out + "/edit"]) == 0
shutdown_distributed(ctx)
"""


def test_two_processes_give_the_one_process_ranking_and_edits(tiny_folder, tmp_path):
    texts = concept_prompts(50)
    (tmp_path / "prompts.txt").write_text("\n".join(texts[:40]) + "\n", encoding="utf-8")
    (tmp_path / "eval.txt").write_text("\n".join(texts[40:]) + "\n", encoding="utf-8")
    (tmp_path / "keywords.txt").write_text("\n".join(hp_mini.concept_words("countries")) + "\n")
    (tmp_path / "both.py").write_text(_BOTH_COMMANDS)
    source = ["--model", str(tiny_folder), "--concept", "countries", "--prompts", str(tmp_path / "prompts.txt"),
              "--n-atoms", "12", "--batch-size", "6", "--chunk-batches", "2", "--quiet"]
    rank = "|".join(["rank", *source])
    edit = "|".join(["edit", *source, "--keywords", str(tmp_path / "keywords.txt"), "--eval-prompts",
                     str(tmp_path / "eval.txt"), "--k", "1", "2", "--n-random", "2", "--max-new-tokens", "4"])
    script = [str(tmp_path / "both.py")]
    # One process: here, with the one thread each launched process has (same kernels, same bits).
    from hp_mini.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = str(tmp_path / "one")
        assert main(rank.split("|") + ["--out", one + "/rank"]) == 0
        assert main(edit.split("|") + ["--ranking", one + "/rank/ranking.csv", "--out", one + "/edit"]) == 0
    finally:
        torch.set_num_threads(threads)
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
         "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *script, str(tmp_path / "two"), rank, edit],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, "\n".join(l for l in two.stderr.splitlines() if "rank1]" in l)[-4000:] or two.stderr[-3000:]
    a, b = read_ranking(tmp_path / "one/rank/ranking.csv"), read_ranking(tmp_path / "two/rank/ranking.csv")
    assert len(a) == len(b) == 8
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert max(abs(float(x["score"]) - float(y["score"])) for x, y in zip(a, b)) <= 1e-10
    assert [r["top_atoms"] for r in a] == [r["top_atoms"] for r in b]
    run = json.loads((tmp_path / "two/rank/run.json").read_text())
    assert run["processes"]["world_size"] == 2 and run["processes"]["backend"] == "gloo"
    assert run["info"]["n_prompts"] == 40
    a, b = read_ranking(tmp_path / "one/edit/edits.csv"), read_ranking(tmp_path / "two/edit/edits.csv")
    assert len(a) == len(b) == 1 + 2 * (2 + 2)
    assert [(r["method"], r["k"], r["heads"]) for r in a] == [(r["method"], r["k"], r["heads"]) for r in b]
    assert max(abs(float(x["value"]) - float(y["value"])) for x, y in zip(a, b)) <= 1e-12


# --------------------------------------------------------------------------- #
# One process: the streaming recorder and the sharded ranking against hp_mini's own
# --------------------------------------------------------------------------- #


def test_streamed_samples_are_record_heads_bit_for_bit(tiny):
    model, tok = tiny
    texts = concept_prompts(23)
    want = hp_mini.record_heads(model, tok, texts, batch_size=4, progress=False)
    got = record_stream(model, tok, iter(texts), batch_size=4, chunk_batches=2, store="samples", progress=False)
    assert torch.equal(got.z, want.z)
    assert torch.equal(got.W_O, want.W_O)
    assert got.layers == want.layers


def test_interleaving_puts_every_ranks_batches_back_in_order(tiny):
    # Ranks 0..2 of 3, simulated in one process: each records batches b with b % 3 == rank.
    model, tok = tiny
    texts = concept_prompts(17)
    want = hp_mini.record_heads(model, tok, texts, batch_size=3, progress=False).z
    batches = [texts[i : i + 3] for i in range(0, len(texts), 3)]
    parts = [hp_mini.record_heads(model, tok, sum(batches[r::3], []), batch_size=3, progress=False).z
             for r in range(3)]
    assert [len(p) for p in parts] == [6, 6, 5]  # batches 0, 3 / 1, 4 / 2, 5 (2 prompts)
    assert torch.equal(interleave_batches(parts, 3), want)


def test_streamed_moments_do_not_grow_with_the_prompts_and_match_the_samples(tiny):
    model, tok = tiny
    read = []
    forwards = []

    def stream(n):
        for text in concept_prompts(n):
            read.append(text)
            yield text

    # Every forward pass sees at most one chunk (2 batches of 4) read ahead of it.
    handle = model.register_forward_pre_hook(lambda m, a: forwards.append(len(read)))
    try:
        small = record_stream(model, tok, stream(8), batch_size=4, chunk_batches=2, progress=False)
        read.clear()
        forwards.clear()
        big = record_stream(model, tok, stream(64), batch_size=4, chunk_batches=2, progress=False)
    finally:
        handle.remove()
    assert len(forwards) == 16
    assert all(seen <= 4 * (i + 1) + 8 for i, seen in enumerate(forwards))
    assert big.z is None and small.z is None
    assert big.moments.count == 64 and small.moments.count == 8
    assert big.moments.sum.shape == small.moments.sum.shape == (2, 4, 8)
    assert big.moments.second.shape == small.moments.second.shape == (2, 4, 8, 8)
    z = hp_mini.record_heads(model, tok, concept_prompts(64), batch_size=4, progress=False).z.double()
    torch.testing.assert_close(big.moments.sum, z.sum(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(big.moments.second, torch.einsum("nlhk,nlhj->lhkj", z, z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_sharded_ranking_is_rank_heads(tiny, criterion):
    model, tok = tiny
    store = "samples" if criterion == "l1" else "moments"
    acts = record_stream(model, tok, concept_prompts(24), batch_size=8, store=store, progress=False)
    dic = hp_mini.unembedding_dictionary(model, tok, hp_mini.concept_words("months"))
    want = hp_mini.rank_heads(acts, dic, n_atoms=6, criterion=criterion, progress=False)
    got = rank_heads_distributed(acts, dic, n_atoms=6, criterion=criterion, progress=False)
    assert got.scores.dtype == torch.float64
    assert got.heads == want.heads
    torch.testing.assert_close(got.scores.float(), want.scores.float(), rtol=1e-6, atol=1e-7)
    for h in got.heads:
        assert got.results[h].atoms.tolist() == want.results[h].atoms.tolist()


def test_each_head_goes_to_exactly_one_rank():
    heads = [(layer, h) for layer in range(3) for h in range(5)]
    blocks = [shard_heads(heads, DistContext(rank=r, world_size=4)) for r in range(4)]
    assert sum(blocks, []) == heads
    assert sorted(len(b) for b in blocks) == [3, 4, 4, 4]


# --------------------------------------------------------------------------- #
# Process group set-up, and bad input
# --------------------------------------------------------------------------- #


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main) == (0, 1, None, True)


def test_a_launch_without_a_rendezvous_says_what_to_run(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT is not set: start the run with torchrun"):
        init_distributed()


def test_bad_recording_arguments(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="prompt stream is empty"):
        record_stream(model, tok, iter([]), progress=False)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        record_stream(model, tok, ["a b"], batch_size=0, progress=False)
    with pytest.raises(TypeError, match=r"chunk_batches must be an integer, got True \(bool\)"):
        record_stream(model, tok, ["a b"], chunk_batches=True, progress=False)
    with pytest.raises(TypeError, match="not one string"):
        record_stream(model, tok, "the capital", progress=False)
    with pytest.raises(ValueError, match="store must be"):
        record_stream(model, tok, ["a b"], store="all", progress=False)


def test_record_stream_refuses_pool_none_and_points_to_record_heads(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"pool must be .*record_heads\(\.\.\., pool=None\)"):
        record_stream(model, tok, ["a b"], pool=None, progress=False)


def test_a_bad_prompt_in_a_later_chunk_is_named_by_its_index_in_the_stream():
    from helpers import CharTokenizer, tiny_model

    gpt2 = tiny_model("gpt2")  # learned absolute positions: 64
    prompts = ["a", "b", "c", "d", "e", "x" * 70, "f"]
    with pytest.raises(ValueError, match="prompt 5 has 70 tokens, more than the 64 positions"):
        record_stream(gpt2, CharTokenizer(), iter(prompts), batch_size=2, chunk_batches=1, progress=False)
    with pytest.raises(ValueError, match="prompt 3 of the stream is empty"):
        record_stream(gpt2, CharTokenizer(), iter(["a", "b", "c", "", "d"]), batch_size=2, progress=False)


def test_bad_ranking_arguments(tiny):
    model, tok = tiny
    moments = record_stream(model, tok, concept_prompts(4), progress=False)
    dic = hp_mini.unembedding_dictionary(model, tok, hp_mini.concept_words("months"))
    with pytest.raises(ValueError, match="criterion='l1' needs every prompt"):
        rank_heads_distributed(moments, dic, n_atoms=4, criterion="l1", progress=False)
    with pytest.raises(ValueError, match="n_atoms must be at least 1"):
        rank_heads_distributed(moments, dic, n_atoms=0, criterion="l2", progress=False)
    one = record_stream(model, tok, concept_prompts(1), progress=False)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        rank_heads_distributed(one, dic, criterion="l2", progress=False)


# --------------------------------------------------------------------------- #
# A model split over devices (accelerate's device_map with disk offload)
# --------------------------------------------------------------------------- #


def test_recording_and_editing_a_model_split_over_devices(tiny_folder, tmp_path):
    # On a CPU-only machine the only second "device" is the disk: layer 1 is offloaded,
    # its weights live on the meta device and accelerate's hooks load them for each
    # forward pass. Recording and editing must give what the undivided model gives.
    whole, tok = hp_mini.load_model(str(tiny_folder))
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    split, _ = hp_mini.load_model(str(tiny_folder), device_map=device_map, offload_folder=tmp_path / "offload")
    assert split.model.layers[1].self_attn.o_proj.weight.device.type == "meta"
    texts = concept_prompts(10)
    want = hp_mini.record_heads(whole, tok, texts, batch_size=4, progress=False)
    got = record_stream(split, tok, texts, batch_size=4, store="samples", progress=False)
    assert torch.equal(got.z, want.z) and torch.equal(got.W_O, want.W_O)
    batch = tok(texts, return_tensors="pt", padding=True)
    edits = {(1, 2): -1.0, (0, 1): 0.0}
    with torch.no_grad():
        with hp_mini.scale_heads(whole, edits):
            want_logits = whole(**batch).logits
        with hp_mini.scale_heads(split, edits):
            got_logits = split(**batch).logits
        plain = whole(**batch).logits
    assert (want_logits - plain).abs().max() > 1e-2  # the edit changes the logits
    assert torch.equal(got_logits, want_logits)


def test_streamed_samples_keep_the_post_norm_bias_factor():
    # Gemma 2 with an attention bias: the bias's pooled share has a per-prompt factor.
    from helpers import CharTokenizer, tiny_model

    model, tok = tiny_model("gemma2"), CharTokenizer()
    texts = ["the capital of France", "a month", "blue", "twelve apples", "on a Monday morning"]
    want = hp_mini.record_heads(model, tok, texts, batch_size=2, progress=False)
    got = record_stream(model, tok, texts, batch_size=2, chunk_batches=1, store="samples", progress=False)
    assert want.bias_factor is not None
    assert torch.equal(got.z, want.z) and torch.equal(got.bias_factor, want.bias_factor)
    assert torch.equal(got.bias, want.bias)


# --------------------------------------------------------------------------- #
# Merging shards recorded apart
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("store", ["samples", "moments"])
def test_merged_shards_are_the_whole_recording(tiny, store):
    # Each shard is one batch of the whole recording, so even the float64 moments
    # are added in the same order: the merge is exact.
    model, tok = tiny
    texts = concept_prompts(10)
    whole = hp_mini.record_heads(model, tok, texts, batch_size=4, store=store, progress=False)
    shards = [hp_mini.record_heads(model, tok, texts[i : i + 4], batch_size=4, store=store, progress=False)
              for i in (0, 4, 8)]
    merged = HeadActivations.concatenate(shards)
    assert merged.n_prompts == whole.n_prompts == 10 and merged.layers == whole.layers
    assert torch.equal(merged.W_O, whole.W_O) and merged.prompts == whole.prompts == texts
    if store == "samples":
        assert merged.moments is None and torch.equal(merged.z, whole.z)
    else:
        assert merged.z is None
        added = shards[0].moments + shards[1].moments + shards[2].moments
        for m in (merged.moments, added):
            assert m.count == whole.moments.count == 10
            assert torch.equal(m.sum, whole.moments.sum) and torch.equal(m.second, whole.moments.second)


def test_merged_shards_keep_the_post_norm_bias_factor():
    from helpers import CharTokenizer, tiny_model

    model, tok = tiny_model("gemma2"), CharTokenizer()
    texts = ["the capital of France", "a month", "blue", "twelve apples", "on a Monday morning"]
    whole = hp_mini.record_heads(model, tok, texts, batch_size=2, progress=False)
    merged = HeadActivations.concatenate(
        [hp_mini.record_heads(model, tok, texts[i : i + 2], batch_size=2, progress=False) for i in (0, 2, 4)]
    )
    assert whole.bias_factor is not None
    assert torch.equal(merged.z, whole.z) and torch.equal(merged.bias_factor, whole.bias_factor)
    assert torch.equal(merged.bias, whole.bias)


def test_merging_shards_of_other_heads_or_stores_is_an_error(tiny):
    model, tok = tiny
    texts = concept_prompts(4)
    samples = hp_mini.record_heads(model, tok, texts, progress=False)
    moments = hp_mini.record_heads(model, tok, texts, store="moments", progress=False)
    layer0 = hp_mini.record_heads(model, tok, texts, layers=[0], store="moments", progress=False)
    with pytest.raises(ValueError, match="mixes per-prompt samples with moments only"):
        HeadActivations.concatenate([samples, moments])
    with pytest.raises(ValueError, match=r"parts\[1\] holds other heads"):
        HeadActivations.concatenate([moments, layer0])
    with pytest.raises(ValueError, match="cannot add the moments of heads shaped"):
        moments.moments + layer0.moments
    with pytest.raises(ValueError, match="non-empty sequence"):
        HeadActivations.concatenate([])


# --------------------------------------------------------------------------- #
# A rank that fails, or ranks that read different prompts, stop every rank
# --------------------------------------------------------------------------- #


def _run_ranks(tmp_path: Path, commands: list[list[str]], timeout: float = 120) -> list[tuple[int, str, float]]:
    """``python -m hp_mini`` once per rank (``commands[r]``), without a launcher that would stop the
    others when one fails; each rank's exit status, stderr and exit time (s after the start)."""
    port = _free_port()
    procs, logs = [], []
    start = time.monotonic()
    for rank, command in enumerate(commands):
        env = dict(_env(), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(len(commands)),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        logs.append(tmp_path / f"rank{rank}.stderr")
        with open(logs[-1], "w") as err:
            procs.append(subprocess.Popen([sys.executable, "-m", "hp_mini", *command], env=env,
                                          stdout=subprocess.DEVNULL, stderr=err))
    ended: list[float | None] = [None] * len(procs)
    try:
        while None in ended and time.monotonic() - start < timeout:
            for r, p in enumerate(procs):
                if ended[r] is None and p.poll() is not None:
                    ended[r] = time.monotonic() - start
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    running = [r for r, t in enumerate(ended) if t is None]
    assert not running, f"ranks {running} still ran {timeout:.0f} s after the start:\n" + "\n".join(
        f"rank {r}: {log.read_text()[-1500:]}" for r, log in enumerate(logs))
    return [(p.returncode, log.read_text(), t) for p, log, t in zip(procs, logs, ended)]


def _rank_command(tiny_folder: Path, prompts: Path, out: Path) -> list[str]:
    return ["rank", "--model", str(tiny_folder), "--concept", "countries", "--prompts", str(prompts),
            "--n-atoms", "4", "--batch-size", "2", "--criterion", "l2", "--quiet", "--out", str(out)]


def test_a_rank_that_fails_on_a_bad_prompt_line_stops_every_rank_with_its_message(tiny_folder, tmp_path):
    lines = [json.dumps({"prompt": text}) for text in concept_prompts(12)]
    (tmp_path / "good.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines[2] = '{"prompt": oops'
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ranks = _run_ranks(tmp_path, [_rank_command(tiny_folder, tmp_path / name, tmp_path / "out")
                                  for name in ("good.jsonl", "bad.jsonl")])
    (rc0, err0, end0), (rc1, err1, end1) = ranks
    assert rc0 != 0 and rc1 != 0
    assert abs(end0 - end1) < 20, (end0, end1)  # the other rank stops within seconds of the failing one
    assert "bad.jsonl, line 3: not valid JSON" in err1  # the failing rank says why
    assert "rank 1 of 2 failed" in err0 and "bad.jsonl, line 3: not valid JSON" in err0
    assert not (tmp_path / "out" / "run.json").exists()


def test_ranks_that_read_different_prompts_stop_before_writing_anything(tiny_folder, tmp_path):
    texts = concept_prompts(24)
    (tmp_path / "a.txt").write_text("\n".join(texts[:12]) + "\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n".join(texts[12:]) + "\n", encoding="utf-8")  # as many prompts
    ranks = _run_ranks(tmp_path, [_rank_command(tiny_folder, tmp_path / name, tmp_path / "out")
                                  for name in ("a.txt", "b.txt")])
    for rc, err, _ in ranks:
        assert rc != 0
        assert "the ranks differ in the prompts they read (rank 0: 12 prompts" in err, err[-2000:]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_one_process_raises_its_own_error_at_the_status_exchange():
    with pytest.raises(KeyError, match="mine"):
        exchange_status(DistContext(), KeyError("mine"))
    exchange_status(DistContext(), None, same={"the prompts they read": "3 prompts"})


def test_the_process_group_times_out_after_HP_MINI_DIST_TIMEOUT_S(monkeypatch):
    started = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **kw: started.append(kw["timeout"]))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    for var, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("HP_MINI_DIST_TIMEOUT_S", raising=False)
    init_distributed("gloo")
    monkeypatch.setenv("HP_MINI_DIST_TIMEOUT_S", "7.5")
    ctx = init_distributed("gloo")
    assert started == [datetime.timedelta(seconds=600), datetime.timedelta(seconds=7.5)]
    assert (ctx.rank, ctx.world_size, ctx.started_here) == (1, 2, True)
    for bad in ("soon", "0", "-3", "inf"):
        monkeypatch.setenv("HP_MINI_DIST_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match=f"HP_MINI_DIST_TIMEOUT_S='{bad}' must be a positive number of seconds"):
            init_distributed("gloo")
    assert len(started) == 2
