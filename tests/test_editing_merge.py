"""benchmarks/editing_text.py --merge-from: a run of some experiments and alphas replaces just those in a recorded run."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hp_mini.experiments.recorded import EditResults

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "editing_text.py"
COLUMNS = ["model", "experiment", "alpha", "method", "k", "draw", "heads", "metric", "value", "baseline",
           "normalised", "ci_low", "ci_high"]


def _run(folder: Path, made: dict, value: float, command: str, selections: list[str]) -> None:
    """A recorded run in ``folder`` whose every value is ``value``, made by ``command``."""
    rows, prompts, experiments = [], [], {}
    for experiment, alphas in made.items():
        for alpha in alphas:
            for method, k in (("unedited", 0), ("SOMP", 2)):
                rows.append(["m", experiment, alpha, method, k, 0, "" if k == 0 else "L1H0 L2H1", "f1", value, 1.0,
                             value, value, value])
                prompts += [{"model": "m", "experiment": experiment, "alpha": alpha, "method": method, "k": k,
                             "prompt": i, "f1": value} for i in range(2)]
        experiments[experiment] = {"selections": {"SOMP": selections},
                                   **{f"distinct_random_alpha{a:g}": {"2": 10} for a in alphas}}
    folder.mkdir()
    pd.DataFrame(rows, columns=COLUMNS).to_csv(folder / "editing_m.csv", index=False)
    pd.DataFrame(prompts).to_csv(folder / "editing_m_prompts.csv", index=False)
    meta = {"command": command, "date": "2026-01-01", "threads": 1, "limit": None, "n_random": 10, "random_like": ["SOMP"],
            "ks": [2], "head_count_sets": {}, "load_average_start": 0.0, "load_average_end": 0.0, "seconds": 60.0,
            "versions": {}, "model": "m", "experiments": experiments}
    (folder / "editing_m.json").write_text(json.dumps(meta), encoding="utf-8")


def _merge(source: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--model", "m", "--merge-from", str(source), "--out", str(out)],
                          capture_output=True, text=True)


def _load(folder: Path) -> EditResults:
    table = pd.read_csv(folder / "editing_m.csv", keep_default_na=False, na_values=[""])
    return EditResults("m", table, pd.read_csv(folder / "editing_m_prompts.csv"),
                       json.loads((folder / "editing_m.json").read_text(encoding="utf-8")))


def test_a_partial_run_replaces_only_its_experiments_and_alphas(tmp_path):
    _run(tmp_path / "old", {"qa": [-1.0, 5.0], "toxicity": [-1.0]}, 0.5, "old run", ["L1H0", "L2H1"])
    _run(tmp_path / "new", {"qa": [-1.0, 0.0]}, 0.25, "new run", ["L3H0", "L2H1"])
    done = _merge(tmp_path / "new", tmp_path / "old")
    assert done.returncode == 0, done.stderr
    run = _load(tmp_path / "old")
    for experiment, alpha, value, command in (("qa", -1.0, 0.25, "new run"), ("qa", 0.0, 0.25, "new run"),
                                              ("qa", 5.0, 0.5, "old run"), ("toxicity", -1.0, 0.5, "old run")):
        assert set(run.edits(experiment, alpha)["value"]) == {value}
        assert run.part(experiment, alpha)["command"] == command
        p = run.prompts[(run.prompts.experiment == experiment) & (run.prompts.alpha == alpha)]
        assert len(p) == 4 and set(p["f1"]) == {value}
    assert [part["made"] for part in run.meta["parts"]] == [{"qa": [5.0], "toxicity": [-1.0]}, {"qa": [-1.0, 0.0]}]
    qa = run.meta["experiments"]["qa"]
    assert qa["selections"] == {"SOMP": ["L3H0", "L2H1"]}  # the new run's, for its alphas
    assert qa["selections_alpha5"] == {"SOMP": ["L1H0", "L2H1"]}  # the kept alpha's own, since they differ
    assert set(qa) >= {"distinct_random_alpha-1", "distinct_random_alpha0", "distinct_random_alpha5"}
    assert run.ks("qa", 0.0) == [2]
    # settings that differ from part to part live in the parts only, never at the top as if they were the whole run's
    assert not set(run.meta) & {"command", "limit", "n_random", "ks", "head_count_sets", "seconds"}
    assert run.meta["model"] == "m"
    # merged again, the parts stay apart: a second partial run replaces the kept alpha too
    _run(tmp_path / "third", {"qa": [5.0]}, 0.75, "third run", ["L3H0", "L2H1"])
    assert _merge(tmp_path / "third", tmp_path / "old").returncode == 0
    run = _load(tmp_path / "old")
    assert [part["command"] for part in run.meta["parts"]] == ["old run", "new run", "third run"]
    assert run.part("qa", 5.0)["command"] == "third run" and "selections_alpha5" not in run.meta["experiments"]["qa"]


def test_merging_into_a_folder_without_a_run_is_refused(tmp_path):
    _run(tmp_path / "new", {"qa": [-1.0]}, 0.25, "new run", ["L1H0"])
    (tmp_path / "empty").mkdir()
    done = _merge(tmp_path / "new", tmp_path / "empty")
    assert done.returncode != 0 and "holds no recorded run of m" in done.stderr
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == []


def _script():
    spec = importlib.util.spec_from_file_location("editing_text_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_write_that_fails_half_way_leaves_the_recorded_run_whole(tmp_path, monkeypatch):
    """The three files are swapped in together: a failure while moving them puts the old ones back."""
    _run(tmp_path / "old", {"qa": [-1.0]}, 0.5, "old run", ["L1H0", "L2H1"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    script = _script()
    replace = Path.replace
    calls = []

    def fail_on_the_fifth_move(self, target):  # 3 moved aside, 1 moved in, then the failure
        calls.append(self)
        if len(calls) == 5:
            raise OSError("disk full")
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", fail_on_the_fifth_move)
    files = {name: (lambda f, name=name: f.write_text(f"new {name}", encoding="utf-8")) for name in before}
    with pytest.raises(OSError, match="disk full"):
        script.swap_in(tmp_path / "old", files)
    assert len(calls) == 5 + 3  # the failure, then the three old files put back
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before  # no staging folder left

    monkeypatch.setattr(Path, "replace", replace)
    script.swap_in(tmp_path / "old", files)
    assert {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "old").iterdir()} == {
        name: f"new {name}" for name in before}


def test_a_writer_that_fails_changes_nothing(tmp_path):
    _run(tmp_path / "old", {"qa": [-1.0]}, 0.5, "old run", ["L1H0", "L2H1"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}

    def broken(path):
        path.write_text("half", encoding="utf-8")
        raise ValueError("cannot serialise")

    files = dict.fromkeys(before, broken)
    with pytest.raises(ValueError, match="cannot serialise"):
        _script().swap_in(tmp_path / "old", files)
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before


def test_a_staging_folder_that_cannot_be_made_leaves_nothing_behind(tmp_path, monkeypatch):
    _run(tmp_path / "old", {"qa": [-1.0]}, 0.5, "old run", ["L1H0", "L2H1"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    script = _script()
    mkdtemp, calls = script.tempfile.mkdtemp, []

    def second_fails(**kwargs):
        calls.append(kwargs)
        if len(calls) == 2:
            raise OSError("no space left")
        return mkdtemp(**kwargs)

    monkeypatch.setattr(script.tempfile, "mkdtemp", second_fails)
    with pytest.raises(OSError, match="no space left"):
        script.swap_in(tmp_path / "old", dict.fromkeys(before, lambda f: f.write_text("new", encoding="utf-8")))
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before  # the first folder is gone too


def test_head_counts_keeps_the_named_sets_and_refuses_unknown_names():
    chosen_counts = _script().chosen_counts
    sets = {"1-2-4%": [3, 5, 11], "paper": [2, 4, 8]}
    assert chosen_counts(sets, None) == sets
    assert chosen_counts(sets, ["paper"]) == {"paper": [2, 4, 8]}
    with pytest.raises(SystemExit, match="no set named 'papers'.*'1-2-4%', 'paper'"):
        chosen_counts(sets, ["papers"])


def test_an_unknown_head_count_set_is_refused_before_any_model_loads():
    done = subprocess.run([sys.executable, str(SCRIPT), "--head-counts", "papers", "--out", "/nonexistent"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--head-counts: invalid choice: 'papers'" in done.stderr
    assert "'1-2-4%'" in done.stderr and "'paper'" in done.stderr


def test_a_write_killed_half_way_is_named_with_both_ways_back_and_nothing_is_deleted(tmp_path):
    """A SIGKILL between moving the old files aside and moving the new ones in leaves both folders behind."""
    _run(tmp_path / "old", {"qa": [-1.0]}, 0.5, "old run", ["L1H0", "L2H1"])
    _run(tmp_path / "new", {"qa": [-1.0]}, 0.25, "new run", ["L1H0", "L2H1"])
    out = tmp_path / "old"
    aside, stage = out / ".replaced-editing_m-abc123", out / ".staging-editing_m-def456"
    (out / ".staging-editing_other-x").mkdir()  # another model's write, under way: not this run's business
    aside.mkdir(), stage.mkdir()
    for name in ("editing_m.csv", "editing_m.json"):  # killed after moving two old files aside...
        (out / name).replace(aside / name)
    shutil.copy(tmp_path / "new" / "editing_m.csv", out / "editing_m.csv")  # ...and one new file in
    shutil.copy(tmp_path / "new" / "editing_m.json", stage / "editing_m.json")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    done = _merge(tmp_path / "new", out)
    assert done.returncode != 0
    message = " ".join(done.stderr.split())
    assert "killed half way" in message and "may be a mix of two runs" in message
    assert ".replaced-editing_m-abc123 holds editing_m.csv, editing_m.json" in message
    assert ".staging-editing_m-def456 holds editing_m.json" in message and "editing_other" not in message
    assert "move the files of the .replaced-* folder back" in message
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # nothing moved, nothing deleted
    for name in ("editing_m.csv", "editing_m.json"):  # the previous run, put back as the message says
        (aside / name).replace(out / name)
    aside.rmdir(), shutil.rmtree(stage)
    assert _load(out).edits("qa", -1.0)["value"].eq(0.5).all()
    assert _merge(tmp_path / "new", out).returncode == 0  # and the next merge goes ahead
