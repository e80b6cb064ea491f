"""``python -m hp_mini rank`` and ``edit``: outputs, agreement with the library, and bad arguments."""

from __future__ import annotations

import csv
import json
import os
from importlib import metadata
from pathlib import Path

import pytest
import torch

import hp_mini
from helpers import concept_prompts, save_tiny_llama
from hp_mini.cli import main


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(concept_prompts(20)) + "\n\n", encoding="utf-8")  # a blank line is skipped
    return path


def rank_args(model, prompts, out, *extra):
    return ["rank", "--model", str(model), "--concept", "countries", "--prompts", str(prompts),
            "--n-atoms", "5", "--batch-size", "8", "--quiet", "--out", str(out), *extra]


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- #
# rank
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_rank_writes_the_ranking_of_rank_heads(tiny_folder, prompts, tmp_path, criterion, capsys):
    assert main(rank_args(tiny_folder, prompts, tmp_path, "--criterion", criterion)) == 0
    said = capsys.readouterr()
    assert said.out == "" and said.err == ""  # --quiet: nothing but errors
    model, tok = hp_mini.load_model(str(tiny_folder))
    acts = hp_mini.record_heads(model, tok, concept_prompts(20), batch_size=8, progress=False)
    dic = hp_mini.unembedding_dictionary(model, tok, hp_mini.concept_words("countries"))
    want = hp_mini.rank_heads(acts, dic, n_atoms=5, criterion=criterion, progress=False)
    table = rows(tmp_path / "ranking.csv")
    assert list(table[0]) == ["rank", "label", "layer", "head", "score", "top_atoms"]
    assert [(int(r["layer"]), int(r["head"])) for r in table] == want.heads
    assert [r["label"] for r in table] == [hp_mini.head_label(*h) for h in want.heads]
    torch.testing.assert_close(torch.tensor([float(r["score"]) for r in table]), want.scores, rtol=1e-6, atol=1e-7)
    best = want.heads[0]
    assert json.loads(table[0]["top_atoms"]) == want.results[best].ordered_labels[:5]
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["arguments"]["criterion"] == criterion and run["info"]["n_prompts"] == 20
    assert run["versions"]["torch"] == metadata.version("torch")
    assert {"load_s", "record_s", "pursuit_s", "total_s"} <= set(run["timings"])


def test_jsonl_prompts_and_a_local_dataset_give_the_text_files_ranking(tiny_folder, prompts, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    texts = concept_prompts(20)
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps({"text" if i % 2 else "prompt": t}) + "\n" for i, t in enumerate(texts)))
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"sentence": t, "id": i}) + "\n"
                                                for i, t in enumerate(texts)))
    assert main(rank_args(tiny_folder, prompts, tmp_path / "txt")) == 0
    assert main(rank_args(tiny_folder, jsonl, tmp_path / "jsonl")) == 0
    dataset = rank_args(tiny_folder, prompts, tmp_path / "ds-out")
    i = dataset.index("--prompts")
    dataset[i : i + 2] = ["--dataset", f"{folder}:train:sentence"]
    assert main(dataset) == 0
    want = rows(tmp_path / "txt" / "ranking.csv")
    assert rows(tmp_path / "jsonl" / "ranking.csv") == want
    assert rows(tmp_path / "ds-out" / "ranking.csv") == want


def test_limit_takes_the_first_prompts(tiny_folder, prompts, tmp_path):
    assert main(rank_args(tiny_folder, prompts, tmp_path, "--limit", "7", "--criterion", "l2")) == 0
    assert json.loads((tmp_path / "run.json").read_text())["info"]["n_prompts"] == 7


def test_device_map_auto_loads_through_accelerate(tiny_folder, prompts, tmp_path):
    assert main(rank_args(tiny_folder, prompts, tmp_path / "plain")) == 0
    assert main(rank_args(tiny_folder, prompts, tmp_path / "auto", "--device-map", "auto")) == 0
    assert rows(tmp_path / "auto" / "ranking.csv") == rows(tmp_path / "plain" / "ranking.csv")


def test_bfloat16_ranks_the_bfloat16_model(tiny_folder, prompts, tmp_path):
    assert main(rank_args(tiny_folder, prompts, tmp_path, "--dtype", "bfloat16", "--criterion", "l2")) == 0
    model, tok = hp_mini.load_model(str(tiny_folder), dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    acts = hp_mini.record_heads(model, tok, concept_prompts(20), batch_size=8, store="moments", progress=False)
    dic = hp_mini.unembedding_dictionary(model, tok, hp_mini.concept_words("countries"))
    want = hp_mini.rank_heads(acts, dic, n_atoms=5, criterion="l2", progress=False)
    table = rows(tmp_path / "ranking.csv")
    assert [(int(r["layer"]), int(r["head"])) for r in table] == want.heads
    torch.testing.assert_close(torch.tensor([float(r["score"]) for r in table]), want.scores, rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "run.json").read_text())["arguments"]["dtype"] == "bfloat16"


def test_the_package_entry_point_dispatches_rank(tiny_folder, prompts, tmp_path):
    from hp_mini.__main__ import main as package_main

    assert package_main(rank_args(tiny_folder, prompts, tmp_path, "--criterion", "l2")) == 0
    assert (tmp_path / "ranking.csv").is_file()


# --------------------------------------------------------------------------- #
# edit
# --------------------------------------------------------------------------- #


def test_edit_scores_the_top_heads_against_controls(tiny_folder, prompts, tmp_path):
    assert main(rank_args(tiny_folder, prompts, tmp_path / "rank")) == 0
    keywords = tmp_path / "keywords.txt"
    keywords.write_text("\n".join(hp_mini.concept_words("countries")[:40]) + "\n")
    evals = tmp_path / "eval.txt"
    evals.write_text("\n".join(concept_prompts(26)[20:]) + "\n")
    args = ["edit", "--model", str(tiny_folder), "--concept", "countries", "--prompts", str(prompts),
            "--batch-size", "8", "--ranking", str(tmp_path / "rank" / "ranking.csv"), "--keywords", str(keywords),
            "--eval-prompts", str(evals), "--k", "1", "2", "--n-random", "2", "--alpha", "-1",
            "--max-new-tokens", "4", "--quiet", "--out", str(tmp_path / "edit")]
    assert main(args) == 0
    table = rows(tmp_path / "edit" / "edits.csv")
    methods = {(r["method"], r["k"]) for r in table}
    assert methods == {("unedited", "0"), ("SOMP", "1"), ("SOMP", "2"), ("logit lens", "1"), ("logit lens", "2"),
                       ("random", "1"), ("random", "2")}
    assert (tmp_path / "edit" / "summary.csv").is_file()
    # The SOMP k=2 value by hand: edit the ranking's top 2 heads and count the keywords.
    from hp_mini.experiments.words import lexical_rate

    model, tok = hp_mini.load_model(str(tiny_folder))
    top = [(int(r["layer"]), int(r["head"])) for r in rows(tmp_path / "rank" / "ranking.csv")[:2]]
    words = hp_mini.concept_words("countries")[:40]
    with hp_mini.scale_heads(model, {h: -1.0 for h in top}):
        texts = hp_mini.generate(model, tok, concept_prompts(26)[20:], max_new_tokens=4, batch_size=8)
    want = lexical_rate(texts, words)
    got = [float(r["value"]) for r in table if r["method"] == "SOMP" and r["k"] == "2"]
    assert got == [pytest.approx(want, abs=1e-12)]
    assert [r["heads"] for r in table if r["method"] == "SOMP" and r["k"] == "2"] == [
        " ".join(hp_mini.head_label(*h) for h in top)]


def test_edit_with_qa_f1(tiny_folder, prompts, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Q: the capital of France?\nA:", "answers": ["Paris"]}) + "\n"
                  + json.dumps({"prompt": "Q: a month?\nA:", "answer": "May"}) + "\n")
    args = ["edit", "--model", str(tiny_folder), "--concept", "countries", "--prompts", str(prompts),
            "--n-atoms", "3", "--qa", str(qa), "--k", "1", "--n-random", "1", "--quiet", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    from hp_mini.experiments.evaluators import qa_evaluator

    model, tok = hp_mini.load_model(str(tiny_folder))
    want = qa_evaluator(model, tok, ["Q: the capital of France?\nA:", "Q: a month?\nA:"], [["Paris"], ["May"]],
                        max_new_tokens=8)()["f1"]
    base = [float(r["value"]) for r in rows(tmp_path / "out" / "edits.csv") if r["method"] == "unedited"]
    assert base == [pytest.approx(want, abs=1e-12)]


# --------------------------------------------------------------------------- #
# Bad arguments: each gets a message that names the argument
# --------------------------------------------------------------------------- #


def _fails(capsys, argv, message, code=2):
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    assert status == code
    err = capsys.readouterr().err
    assert message in err, err


def test_argument_errors(tiny_folder, prompts, tmp_path, capsys):
    base = rank_args(tiny_folder, prompts, tmp_path / "out")

    def swap(flag, value):
        argv = list(base)
        argv[argv.index(flag) + 1] = value
        return argv

    _fails(capsys, swap("--prompts", str(tmp_path / "nope.txt")), "--prompts: no such file")
    _fails(capsys, swap("--concept", "planets"), "--concept: unknown concept 'planets'; choose one of")
    _fails(capsys, base + ["--words", str(prompts)], "argument --words: not allowed with argument --concept")
    no_concept = [a for a in base if a not in ("--concept", "countries")]
    _fails(capsys, no_concept, "one of the arguments --concept --words is required")
    _fails(capsys, base + ["--criterion", "l3"], "argument --criterion: invalid choice: 'l3'")
    _fails(capsys, swap("--n-atoms", "0"), "argument --n-atoms: must be a positive integer, got 0")
    _fails(capsys, swap("--n-atoms", "ten"), "argument --n-atoms: expected a positive integer, got 'ten'")
    _fails(capsys, base + ["--dataset", "x:y:z"], "argument --dataset: not allowed with argument --prompts")
    _fails(capsys, base + ["--pool", "max"], "argument --pool: invalid choice")
    _fails(capsys, base + ["--dtype", "int8"], "argument --dtype: invalid choice")
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("a\n")
    _fails(capsys, swap("--prompts", str(csv_file)), "is neither .txt (one prompt per line) nor .jsonl")
    empty = tmp_path / "words.txt"
    empty.write_text("# nothing\n\n")
    words = [a if a != "--concept" else "--words" for a in base]
    words[words.index("--words") + 1] = str(empty)
    _fails(capsys, words, "holds no words: give one word per line")
    unknown = tmp_path / "unknown-words.txt"
    unknown.write_text("New Zealand\nEl Salvador\n")  # multi-token words only: no atom
    words[words.index("--words") + 1] = str(unknown)
    _fails(capsys, words, "--words: no dictionary for")
    _fails(capsys, swap("--model", str(tmp_path / "no-model")), "--model: load_model", code=1)
    _fails(capsys, base + ["--device", "cpu", "--device-map", "auto"], "--device and --device-map exclude each other")


def test_prompt_file_errors(tiny_folder, tmp_path, capsys):
    bad_field = tmp_path / "a.jsonl"
    bad_field.write_text(json.dumps({"prompt": "the capital"}) + "\n" + json.dumps({"question": "x"}) + "\n")
    _fails(capsys, rank_args(tiny_folder, bad_field, tmp_path / "o"), "a.jsonl, line 2: no 'prompt' or 'text' field")
    not_json = tmp_path / "b.jsonl"
    not_json.write_text("{oops\n")
    _fails(capsys, rank_args(tiny_folder, not_json, tmp_path / "o"), "b.jsonl, line 1: not valid JSON")
    one = tmp_path / "one.txt"
    one.write_text("the capital of France\n")
    _fails(capsys, rank_args(tiny_folder, one, tmp_path / "o"), "ranking needs at least 2 prompts, got 1")


def test_dataset_errors(tiny_folder, prompts, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    base = rank_args(tiny_folder, prompts, tmp_path / "o")
    i = base.index("--prompts")

    def dataset(spec):
        argv = list(base)
        argv[i : i + 2] = ["--dataset", spec]
        return argv

    _fails(capsys, dataset("trivia_qa"), "--dataset must be NAME:SPLIT:COLUMN")
    _fails(capsys, dataset("no-such-org/no-such-dataset:train:text"),
           "only local dataset folders or files and datasets already in the Hugging Face cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"sentence": "the capital"}) + "\n")
    _fails(capsys, dataset(f"{folder}:train:text"), "has no column 'text'; columns: sentence")


def test_edit_argument_errors(tiny_folder, prompts, tmp_path, capsys):
    words = tmp_path / "w.txt"
    words.write_text("France\n")
    base = ["edit", "--model", str(tiny_folder), "--concept", "countries", "--prompts", str(prompts),
            "--out", str(tmp_path / "o"), "--quiet"]
    _fails(capsys, base + ["--keywords", str(words)], "--keywords needs --eval-prompts FILE")
    _fails(capsys, base, "one of the arguments --qa --keywords is required")
    _fails(capsys, base + ["--qa", str(tmp_path / "missing.jsonl")], "--qa: no such file")
    _fails(capsys, base + ["--keywords", str(words), "--eval-prompts", str(prompts), "--k", "0"],
           "argument --k: must be a positive integer, got 0")
    bad = tmp_path / "ranking.csv"
    bad.write_text("rank,layer,head\n1,7,0\n")
    _fails(capsys, base + ["--keywords", str(words), "--eval-prompts", str(prompts), "--ranking", str(bad)],
           "--ranking: heads [(7, 0)] are not heads of")


# --------------------------------------------------------------------------- #
# Outputs: whole or absent, never mixed, never into a rank run's folder
# --------------------------------------------------------------------------- #


def edit_args(model, prompts, tmp_path, out, *extra):
    keywords = tmp_path / "keywords.txt"
    keywords.write_text("\n".join(hp_mini.concept_words("countries")[:40]) + "\n")
    evals = tmp_path / "eval.txt"
    evals.write_text("\n".join(concept_prompts(24)[20:]) + "\n")
    return ["edit", "--model", str(model), "--concept", "countries", "--prompts", str(prompts), "--n-atoms", "3",
            "--batch-size", "8", "--keywords", str(keywords), "--eval-prompts", str(evals), "--k", "1",
            "--n-random", "1", "--max-new-tokens", "2", "--quiet", "--out", str(out), *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_edit_out_pointing_at_rank_folder_is_refused(tiny_folder, prompts, tmp_path, capsys):
    ranked = tmp_path / "rank"
    assert main(rank_args(tiny_folder, prompts, ranked)) == 0
    other = tmp_path / "other-rank"
    assert main(rank_args(tiny_folder, prompts, other, "--criterion", "l2")) == 0
    before = snapshot(ranked), snapshot(other)
    ranking = ["--ranking", str(ranked / "ranking.csv")]
    _fails(capsys, edit_args(tiny_folder, prompts, tmp_path, ranked, *ranking),
           "holds the --ranking file; edit never writes into a rank run's folder")
    _fails(capsys, edit_args(tiny_folder, prompts, tmp_path, ranked, *ranking, "--overwrite"),
           "edit never writes into a rank run's folder")
    _fails(capsys, edit_args(tiny_folder, prompts, tmp_path, other, *ranking, "--overwrite"),
           "holds the outputs of a rank run")
    assert (snapshot(ranked), snapshot(other)) == before
    assert main(edit_args(tiny_folder, prompts, tmp_path, ranked / "edit", *ranking)) == 0  # a folder inside is fine
    assert sorted(p.name for p in (ranked / "edit").iterdir()) == ["edits.csv", "run.json", "summary.csv"]


def test_out_holding_an_earlier_run_is_refused_unless_overwrite_then_replaced_whole(tiny_folder, prompts, tmp_path,
                                                                                     capsys):
    out = tmp_path / "runs" / "out"
    assert main(edit_args(tiny_folder, prompts, tmp_path, out)) == 0
    before = snapshot(out)
    _fails(capsys, rank_args(tiny_folder, prompts, out),
           "holds the results of an earlier run (edits.csv, run.json, summary.csv); give --overwrite")
    assert snapshot(out) == before
    assert main(rank_args(tiny_folder, prompts, out, "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["heatmap.png", "ranking.csv", "run.json"]  # no edits.csv left
    assert json.loads((out / "run.json").read_text())["command"] == "rank"
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temporary folder left
    (out / "notes.txt").write_text("mine\n")
    _fails(capsys, rank_args(tiny_folder, prompts, out, "--overwrite"),
           "holds files that rank does not write (notes.txt)")
    assert (out / "notes.txt").read_text() == "mine\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(rank_args(tiny_folder, prompts, empty)) == 0  # an empty folder is used as it is
    assert (empty / "ranking.csv").is_file()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_interrupted_run_leaves_previous_results_untouched_and_nothing_that_looks_complete(
        tiny_folder, prompts, tmp_path, monkeypatch, stop):
    import hp_mini.cli

    out = tmp_path / "out"
    assert main(rank_args(tiny_folder, prompts, out)) == 0
    before = snapshot(out)

    def interrupted(ranking, acts, path, title):
        Path(path).write_bytes(b"half a png")
        raise stop("stopped while writing")

    monkeypatch.setattr(hp_mini.cli, "write_heatmap", interrupted)
    with pytest.raises(stop):
        main(rank_args(tiny_folder, prompts, out, "--criterion", "l2", "--overwrite"))
    assert snapshot(out) == before  # ranking.csv, heatmap.png and run.json of the first run
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the temporary folder is gone
    with pytest.raises(stop):
        main(rank_args(tiny_folder, prompts, tmp_path / "new"))
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_out_under_a_regular_file_is_refused_before_any_work(tiny_folder, prompts, tmp_path, capsys, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(hp_mini, "load_model", no_load)
    plain = tmp_path / "file.txt"
    plain.write_text("x\n")
    _fails(capsys, rank_args(tiny_folder, prompts, plain / "sub" / "out"), f"--out: {plain / 'sub' / 'out'} cannot "
           f"be created: {plain} is a file, not a folder")
    _fails(capsys, rank_args(tiny_folder, prompts, plain), f"--out: {plain} exists and is not a folder")


def test_out_in_a_folder_without_permission_is_refused_before_any_work(tiny_folder, prompts, tmp_path, capsys,
                                                                        monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(hp_mini, "load_model", no_load)
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
    elif Path("/proc/self").is_dir():
        locked = Path("/proc")  # root may write anywhere, but no file can be created in /proc
    else:  # pragma: no cover
        pytest.skip("no folder that this user cannot write in")
    try:
        _fails(capsys, rank_args(tiny_folder, prompts, locked / "out"), f"--out: cannot write in {locked} (")
    finally:
        if locked != Path("/proc"):
            locked.chmod(0o700)


def test_unwritable_out_is_refused_on_every_rank_before_torchrun_starts(tiny_folder, prompts, tmp_path, capsys,
                                                                        monkeypatch):
    # A rank of a torchrun run whose process group could never start: the --out check comes first.
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    plain = tmp_path / "file.txt"
    plain.write_text("x\n")
    _fails(capsys, rank_args(tiny_folder, prompts, plain / "out"), "is a file, not a folder")


# --------------------------------------------------------------------------- #
# Text files: UTF-8 with or without BOM, pipes and standard input
# --------------------------------------------------------------------------- #


LATIN1 = "The capital of France is known for its café.\n".encode("latin-1")


@pytest.mark.parametrize("flag", ["--prompts", "--words", "--qa", "--keywords", "--eval-prompts", "--ranking"])
def test_non_utf8_files_are_refused_naming_the_file_the_byte_and_a_conversion(tiny_folder, prompts, tmp_path,
                                                                              capsys, flag):
    bad = tmp_path / ("bad.jsonl" if flag == "--qa" else "bad.csv" if flag == "--ranking" else "bad.txt")
    bad.write_bytes(LATIN1)
    argv = {"--prompts": rank_args(tiny_folder, bad, tmp_path / "o"),
            "--words": [a if a != "--concept" else "--words" for a in rank_args(tiny_folder, prompts, tmp_path / "o")],
            "--qa": ["edit", "--model", str(tiny_folder), "--concept", "countries", "--prompts", str(prompts),
                     "--qa", str(bad), "--quiet", "--out", str(tmp_path / "o")],
            "--keywords": edit_args(tiny_folder, prompts, tmp_path, tmp_path / "o"),
            "--eval-prompts": edit_args(tiny_folder, prompts, tmp_path, tmp_path / "o"),
            "--ranking": edit_args(tiny_folder, prompts, tmp_path, tmp_path / "o", "--ranking", str(bad))}[flag]
    if flag in ("--words", "--keywords", "--eval-prompts"):
        argv[argv.index(flag) + 1] = str(bad)
    offset = LATIN1.index(b"\xe9")
    _fails(capsys, argv, f"{flag}: {bad} is not UTF-8 text: byte {offset} (line 1) is 0xE9")
    _fails(capsys, argv, f"iconv -f latin1 -t utf-8 {bad} > {bad.with_name('bad.utf8' + bad.suffix)}")
    assert not (tmp_path / "o").exists()


def test_utf16_and_binary_prompt_files_are_refused(tiny_folder, tmp_path, capsys):
    utf16 = tmp_path / "utf16.txt"
    utf16.write_text("\n".join(concept_prompts(4)) + "\n", encoding="utf-16")
    _fails(capsys, rank_args(tiny_folder, utf16, tmp_path / "o"),
           f"--prompts: {utf16} is UTF-16 text (byte 0 starts a UTF-16 byte-order mark)")
    _fails(capsys, rank_args(tiny_folder, utf16, tmp_path / "o"), "iconv -f utf-16 -t utf-8")
    utf16le = tmp_path / "utf16le.txt"
    utf16le.write_text("the capital\n", encoding="utf-16-le")  # no byte-order mark: NUL bytes
    _fails(capsys, rank_args(tiny_folder, utf16le, tmp_path / "o"), "byte 1 (line 1) is a NUL byte (0x00)")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"ok\n\x89PNG\r\n\x1a\n\x00\x00")
    _fails(capsys, rank_args(tiny_folder, binary, tmp_path / "o"), "byte 3 (line 2) is 0x89")
    assert not (tmp_path / "o").exists()


def test_utf8_bom_is_dropped_from_prompts_words_and_ranking(tiny_folder, prompts, tmp_path):
    from hp_mini.cli import read_prompts, read_ranking_csv

    texts = concept_prompts(5)
    bom_txt = tmp_path / "bom.txt"
    bom_txt.write_bytes(b"\xef\xbb\xbf" + ("\n".join(texts) + "\n").encode())
    assert list(read_prompts(bom_txt)) == texts
    bom_jsonl = tmp_path / "bom.jsonl"
    bom_jsonl.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps({"prompt": t}) + "\n" for t in texts).encode())
    assert list(read_prompts(bom_jsonl)) == texts
    ranking = tmp_path / "ranking.csv"
    ranking.write_bytes(b"\xef\xbb\xbfrank,label,layer,head\r\n1,L1H2,1,2\r\n2,L0H3,0,3\r\n")
    assert read_ranking_csv(ranking) == [(1, 2), (0, 3)]
    words = ["France", "Italy", "Japan", "Peru"]
    for name, data in [("plain", "\n".join(words).encode()), ("bom", b"\xef\xbb\xbf" + "\n".join(words).encode())]:
        (tmp_path / f"{name}-words.txt").write_bytes(data)
        argv = [a if a != "--concept" else "--words" for a in rank_args(tiny_folder, prompts, tmp_path / name)]
        argv[argv.index("--words") + 1] = str(tmp_path / f"{name}-words.txt")
        argv[argv.index("--n-atoms") + 1] = "3"
        assert main(argv + ["--criterion", "l2"]) == 0
    plain, bom = (json.loads((tmp_path / n / "run.json").read_text())["info"] for n in ("plain", "bom"))
    assert bom["missing_words"] == plain["missing_words"] == []
    assert rows(tmp_path / "bom" / "ranking.csv") == rows(tmp_path / "plain" / "ranking.csv")


def test_prompts_from_a_named_pipe_and_from_standard_input(tiny_folder, prompts, tmp_path, monkeypatch):
    import io
    import sys
    import threading

    assert main(rank_args(tiny_folder, prompts, tmp_path / "file", "--criterion", "l2")) == 0
    data = prompts.read_bytes()
    fifo = tmp_path / "prompts.fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as f:
            f.write(data)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    assert main(rank_args(tiny_folder, fifo, tmp_path / "fifo", "--criterion", "l2")) == 0
    writer.join(timeout=10)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    assert main(rank_args(tiny_folder, "-", tmp_path / "stdin", "--criterion", "l2")) == 0
    want = rows(tmp_path / "file" / "ranking.csv")
    assert rows(tmp_path / "fifo" / "ranking.csv") == want
    assert rows(tmp_path / "stdin" / "ranking.csv") == want
    assert json.loads((tmp_path / "stdin" / "run.json").read_text())["info"]["n_prompts"] == 20


# --------------------------------------------------------------------------- #
# Devices, offloading, the number of atoms, duplicated heads
# --------------------------------------------------------------------------- #


def test_device_cuda_without_gpu_or_nonsense_is_refused_before_loading(tiny_folder, prompts, tmp_path, capsys,
                                                                       monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --device was checked")

    monkeypatch.setattr(hp_mini, "load_model", no_load)
    base = rank_args(tiny_folder, prompts, tmp_path / "o")
    _fails(capsys, base + ["--device", "nonsense"], "--device='nonsense' is not a device torch knows")
    _fails(capsys, base + ["--device", "meta"], "--device='meta': the 'meta' device holds only the shapes")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails(capsys, base + ["--device", "cuda"], "--device='cuda', but this machine has no cuda device")
    _fails(capsys, base + ["--device", "cuda:1"], "--device='cuda:1', but this machine has no cuda device")
    assert not (tmp_path / "o").exists()


def test_offload_folder_without_device_map_is_refused(tiny_folder, prompts, tmp_path, capsys):
    _fails(capsys, rank_args(tiny_folder, prompts, tmp_path / "o", "--offload-folder", str(tmp_path / "off")),
           "--offload-folder goes with --device-map auto")


def test_n_atoms_above_the_dictionary_records_asked_and_used(tiny_folder, prompts, tmp_path, monkeypatch):
    import hp_mini.cli

    words = tmp_path / "words.txt"
    words.write_text("France\nItaly\nJapan\n")
    titles = []
    write = hp_mini.cli.write_heatmap

    def keep_title(ranking, acts, path, title):
        titles.append(title)
        write(ranking, acts, path, title)

    monkeypatch.setattr(hp_mini.cli, "write_heatmap", keep_title)
    argv = [a if a != "--concept" else "--words" for a in rank_args(tiny_folder, prompts, tmp_path / "o")]
    argv[argv.index("--words") + 1] = str(words)
    argv[argv.index("--n-atoms") + 1] = "7"
    with pytest.warns(RuntimeWarning, match="n_atoms=7 is more than the 3 atoms"):
        assert main(argv) == 0
    info = json.loads((tmp_path / "o" / "run.json").read_text())["info"]
    assert (info["n_atoms_asked"], info["n_atoms_used"], info["n_atoms_in_dictionary"]) == (7, 3, 3)
    assert "3 atoms (7 asked)" in titles[0]


def test_ranking_with_a_duplicated_head_is_refused(tiny_folder, prompts, tmp_path, capsys, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --ranking was read")

    monkeypatch.setattr(hp_mini, "load_model", no_load)
    ranking = tmp_path / "ranking.csv"
    ranking.write_text("rank,layer,head\n1,1,2\n2,0,3\n3,1,2\n4,0,1\n")
    _fails(capsys, edit_args(tiny_folder, prompts, tmp_path, tmp_path / "o", "--ranking", str(ranking), "--k", "2"),
           f"--ranking: {ranking} lists a head more than once: L1H2 (layer 1, head 2) on lines 2, 4")
