"""The ``rank``, ``edit`` and ``train`` commands of ``python -m hp_mini``.

``rank`` records every head over a stream of prompts, ranks the heads for a
concept by SOMP and writes ``ranking.csv``, ``heatmap.png`` and ``run.json``::

    python -m hp_mini rank --model smollm2-135m --concept countries \\
        --prompts prompts.txt --n-atoms 50 --criterion l1 --out runs/countries

``edit`` scales the top ``k`` heads (of a ``ranking.csv`` or of a ranking it
computes) and scores the model against logit-lens and random controls, with
QA F1 (``--qa``) or a keyword count (``--keywords`` with ``--eval-prompts``)::

    python -m hp_mini edit --model smollm2-135m --concept countries \\
        --prompts prompts.txt --ranking runs/countries/ranking.csv \\
        --qa questions.jsonl --k 1 2 4 8 --alpha -1 --out runs/countries-edit

``train`` trains one of hp_mini's LLaVAs (``smollm2-llava``, ``gemma3-llava``:
:data:`hp_mini.vision.llava.RECIPES`) and writes its weights, with
``training.json`` beside them (settings, seconds, threads, first and final
losses, SHA-256)::

    python -m hp_mini train smollm2-llava --out retrained/weights.safetensors --threads 1

``--tiny`` runs the whole training in seconds on a one-layer tower and a few
steps (a check of the pipeline, not a useful model); ``--steps`` and
``--tower-steps`` change the projector's and the tower's steps. The files are
loaded with ``hp_mini.vision.llava.load_llava(NAME, FILE)``, which checks the
SHA-256 recorded in ``training.json``.

``rank`` and ``edit`` run unchanged under ``torchrun --nproc_per_node=N`` or ``accelerate
launch``: the prompts are shared out for recording and the heads for SOMP
(:mod:`hp_mini.parallel`); rank 0 writes the outputs.

Outputs
    ``--out`` is a new folder, an empty one, or the folder of an earlier run,
    which is replaced as a whole only with ``--overwrite``; a folder holding
    other files is refused. ``train``'s ``--out`` is the weights file: it and
    ``training.json`` beside it are replaced only with ``--overwrite``. The results are written into a temporary folder
    beside ``--out`` (``NAME.incomplete-XXXXXXXX``) and renamed into place when
    complete, ``run.json`` included: an interrupted or failed run leaves the
    earlier results as they were. ``--out`` is checked to be writable before
    any work, on every process. ``edit`` never writes into a folder that holds
    a ``rank`` run.

Prompt files
    ``.txt``: one prompt per line (blank lines are skipped). ``.jsonl``: one
    JSON object per line with a string field ``"prompt"`` or ``"text"``.
    ``--prompts -`` reads standard input, one prompt per line; a named pipe
    is read once, as ``.jsonl`` when its name ends so, else one prompt per
    line (standard input and pipes need a single process: under ``torchrun``
    every process reads the prompts). ``--dataset NAME:SPLIT:COLUMN`` streams
    a column of a ``datasets`` dataset (a local folder or file, or a dataset
    already in the cache when offline).

Text files
    Prompts, word lists, ``--qa``, ``--keywords``, ``--eval-prompts`` and
    ``--ranking`` files are read as UTF-8, with or without a byte-order mark;
    any other encoding is refused with the offending byte and an ``iconv``
    command that converts the file.

Memory
    ``--criterion l2`` keeps only per-head moments: memory does not grow with
    the number of prompts. ``--criterion l1`` (the paper's) keeps every
    prompt's pooled head outputs: ``4 x prompts x layers x heads x d_head``
    bytes, i.e. ``4 x prompts x layers x d_model`` (Mistral-7B: 512 KiB per
    prompt, 5 GiB for 10,000 prompts) on each process.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import secrets
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import torch

from hp_mini.checks import check_device
from hp_mini.textfiles import STDIN, TextFileError, iter_lines, read_text

__all__ = ["CommandError", "add_commands", "main", "read_prompts", "run_command", "run_train"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
COMMANDS = ("rank", "edit", "train")
PROMPT_FIELDS = ("prompt", "text")
QUESTION_FIELDS = ("prompt", "question")
ANSWER_FIELDS = ("answers", "answer")
RANK_OUTPUTS = ("ranking.csv", "heatmap.png", "run.json")
EDIT_OUTPUTS = ("edits.csv", "summary.csv", "run.json")

_MEMORY_NOTE = (
    "L1 keeps every prompt's pooled head outputs, 4 x prompts x layers x d_model bytes "
    "(Mistral-7B: 512 KiB a prompt); L2 keeps per-head moments, whatever the number of prompts"
)


class CommandError(ValueError):
    """A command's arguments or input files are wrong; the message says what to do."""


# --------------------------------------------------------------------------- #
# Arguments
# --------------------------------------------------------------------------- #


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _add_source(p: argparse.ArgumentParser) -> None:
    concept = p.add_mutually_exclusive_group(required=True)
    concept.add_argument("--concept", metavar="NAME",
                         help="a word list shipped with hp_mini (see hp_mini.concept_names())")
    concept.add_argument("--words", metavar="FILE", type=Path,
                         help="a word list: one word per line, '#' lines skipped")
    prompts = p.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompts", metavar="FILE", type=Path,
                         help="prompts: .txt (one per line) or .jsonl (a 'prompt' or 'text' field per line); "
                              "'-' reads standard input, one prompt per line")
    prompts.add_argument("--dataset", metavar="NAME:SPLIT:COLUMN",
                         help="stream a column of a datasets dataset (a local folder or file, or one in the "
                              "cache when offline)")
    p.add_argument("--limit", type=_positive, metavar="N", help="use only the first N prompts")
    p.add_argument("--n-atoms", type=_positive, default=50, help="SOMP steps per head (default 50)")
    p.add_argument("--criterion", choices=("l1", "l2"), default="l1",
                   help=f"SOMP criterion (default l1, the paper's). Memory: {_MEMORY_NOTE}")
    p.add_argument("--pool", choices=("mean", "last"), default="mean",
                   help="pool each prompt's tokens by their mean (default) or take the last token")
    p.add_argument("--batch-size", type=_positive, default=16, help="prompts per forward pass (default 16)")
    p.add_argument("--chunk-batches", type=_positive, default=8,
                   help="batches read from the stream at a time (default 8)")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME_OR_PATH",
                   help="an hp_mini model name, a GGUF file, a transformers folder or a Hugging Face id")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="weights' dtype (default float32)")
    p.add_argument("--device", default=None,
                   help="device of the model (default: this process's GPU if there is one, else cpu)")
    p.add_argument("--device-map", choices=("auto",), default=None,
                   help="load through accelerate's device_map over every visible GPU, offloading to CPU "
                        "and then to --offload-folder")
    p.add_argument("--offload-folder", type=Path, default=None, help="where --device-map offloads to disk")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output folder: new, empty, or an earlier run's (with --overwrite); written whole or "
                        "not at all")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in --out, as a whole")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages, only errors")


def add_commands(subparsers) -> None:
    """Add the ``rank``, ``edit`` and ``train`` subcommands to an ``argparse`` subparsers object."""
    fmt = argparse.RawDescriptionHelpFormatter
    rank = subparsers.add_parser(
        "rank", help="rank every head for a concept (ranking.csv, heatmap.png, run.json)",
        description="Record every head over the prompts, rank the heads for a concept by SOMP and "
                    f"write DIR/ranking.csv, DIR/heatmap.png and DIR/run.json. Memory: {_MEMORY_NOTE}.",
        formatter_class=fmt)
    _add_model(rank)
    _add_source(rank)

    edit = subparsers.add_parser(
        "edit", help="score the edit of the top k heads against logit-lens and random controls",
        description="Scale the top k heads of a ranking (--ranking, or computed from the prompts) by "
                    "--alpha and score the model with QA F1 (--qa) or a keyword count (--keywords with "
                    "--eval-prompts), against the logit lens's top k and random heads drawn layer by "
                    "layer. Writes DIR/edits.csv, DIR/summary.csv and DIR/run.json.",
        formatter_class=fmt)
    _add_model(edit)
    _add_source(edit)
    edit.add_argument("--ranking", type=Path, metavar="CSV", help="a ranking.csv written by 'rank' (else computed)")
    edit.add_argument("--k", type=_positive, nargs="+", default=[1, 2, 4, 8], help="numbers of heads to edit")
    edit.add_argument("--alpha", type=float, default=-1.0, help="scale of the edited heads (default -1)")
    edit.add_argument("--n-random", type=int, default=10, help="random control sets per k (default 10)")
    edit.add_argument("--seed", type=int, default=0, help="seed of the random controls")
    metric = edit.add_mutually_exclusive_group(required=True)
    metric.add_argument("--qa", type=Path, metavar="JSONL",
                        help="QA F1: a .jsonl with a 'prompt' or 'question' and 'answers' (list) or 'answer'")
    metric.add_argument("--keywords", type=Path, metavar="FILE",
                        help="keyword count: words (one per line) counted in the continuations of --eval-prompts")
    edit.add_argument("--eval-prompts", type=Path, metavar="FILE",
                      help="prompts to continue for --keywords (.txt or .jsonl)")
    edit.add_argument("--max-new-tokens", type=_positive, default=8, help="tokens generated per prompt")
    _add_train(subparsers)


def _add_train(subparsers) -> None:
    from hp_mini.vision.llava import RECIPES

    train = subparsers.add_parser(
        "train", help="train a LLaVA's vision tower and projector (weights and training.json)",
        description="Train a LLaVA's vision tower and projector from the recipe "
                    "(hp_mini.vision.llava.TRAINING; 9,094 s on one thread for smollm2-llava, 3,821 s on two for "
                    "gemma3-llava) and write FILE and "
                    "training.json beside it, whole or not at all.")
    train.add_argument("name", choices=tuple(RECIPES), help="the model to train")
    train.add_argument("--out", type=Path, default=None, metavar="FILE",
                       help="the weights file to write, a .safetensors file (default NAME/weights.safetensors); "
                            "training.json is written beside it")
    train.add_argument("--overwrite", action="store_true", help="replace FILE and training.json if they exist")
    train.add_argument("--threads", type=_positive, default=1, help="torch threads (default 1)")
    train.add_argument("--steps", type=_positive, default=None, help="projector steps (default: the recipe's)")
    train.add_argument("--tower-steps", type=_positive, default=None,
                       help="contrastive steps of the tower (default: the recipe's)")
    train.add_argument("--tiny", action="store_true",
                       help="a run of seconds (one-layer tower, few steps): checks the pipeline, not a useful model")
    train.add_argument("--quiet", action="store_true", help="no progress bars, only errors and the summary line")


def _check(args: argparse.Namespace) -> None:
    """Argument checks that argparse cannot express; raise CommandError."""
    import hp_mini

    if args.concept is not None and args.concept not in hp_mini.concept_names():
        raise CommandError(f"--concept: unknown concept {args.concept!r}; choose one of "
                           f"{', '.join(hp_mini.concept_names())}, or give a word list with --words FILE")
    for flag, path in _input_files(args):
        _input_kind(flag, path)
    if (args.prompts is not None and _input_kind("--prompts", args.prompts) == "file"
            and args.prompts.suffix.lower() not in (".txt", ".jsonl")):
        raise CommandError(f"--prompts: {args.prompts} is neither .txt (one prompt per line) nor .jsonl "
                           f"(a {' or '.join(repr(f) for f in PROMPT_FIELDS)} field per line)")
    if args.dataset is not None:
        _dataset_spec(args.dataset)
    if args.device_map is not None and args.device is not None:
        raise CommandError("--device and --device-map exclude each other: --device-map places the layers itself")
    if args.device is not None:
        _check_device(args.device)
    if args.offload_folder is not None and args.device_map is None:
        raise CommandError("--offload-folder goes with --device-map auto, which offloads layers to it; "
                           "without --device-map the model is not offloaded: drop --offload-folder or add "
                           "--device-map auto")
    if args.command == "edit":
        if args.keywords is not None and args.eval_prompts is None:
            raise CommandError("--keywords needs --eval-prompts FILE: the prompts whose continuations are counted")
        if args.qa is not None and args.eval_prompts is not None:
            raise CommandError("--eval-prompts goes with --keywords; --qa files hold their own prompts")
        if args.n_random < 0:
            raise CommandError(f"--n-random must be 0 or more, got {args.n_random}")
    _check_out(args)


def _input_files(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The input files given, with their flags."""
    files = [("--words", args.words), ("--prompts", args.prompts)]
    if args.command == "edit":
        files += [("--ranking", args.ranking), ("--qa", args.qa), ("--keywords", args.keywords),
                  ("--eval-prompts", args.eval_prompts)]
    return [(flag, path) for flag, path in files if path is not None]


def _input_kind(flag: str, path: Path) -> str:
    """``"stdin"``, ``"file"`` (a regular file) or ``"stream"`` (a named pipe or a character device)."""
    if str(path) == STDIN:
        if flag != "--prompts":
            raise CommandError(f"{flag}: '-' (standard input) is read only by --prompts; give a file")
        return "stdin"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CommandError(f"{flag}: no such file: {path}") from None
    except OSError as err:
        raise CommandError(f"{flag}: cannot read {path}: {err.strerror or err}") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return "stream"
    if stat.S_ISDIR(mode):
        raise CommandError(f"{flag}: {path} is a folder; give a file")
    raise CommandError(f"{flag}: {path} is neither a file nor a named pipe")


def _check_single_reader(args: argparse.Namespace, ctx) -> None:
    """Standard input and named pipes can be read once, by one process; under torchrun every rank reads."""
    if ctx.world_size == 1:
        return
    for flag, path in _input_files(args):
        if _input_kind(flag, path) != "file":
            raise CommandError(
                f"{flag}: {'standard input' if str(path) == STDIN else f'{path} (a named pipe)'} can be read "
                f"once, by one process, but each of the {ctx.world_size} processes of this run reads it: "
                "save it to a file first"
            )


def _check_device(spec: str) -> None:
    """``--device`` names a device that this machine has (before anything is loaded)."""
    try:
        check_device(spec, "--device")
    except ValueError as err:
        raise CommandError(f"{err}, or leave --device out (this process's GPU if there is one, else cpu)") from None


def _results_in(folder: Path) -> tuple[list[str], list[str]]:
    """The entries of ``folder`` that ``rank`` or ``edit`` write, and the others."""
    names = sorted(p.name for p in folder.iterdir())
    ours = set(RANK_OUTPUTS) | set(EDIT_OUTPUTS)
    return [n for n in names if n in ours], [n for n in names if n not in ours]


def _holds_rank_run(folder: Path) -> bool:
    """Whether ``folder`` holds the outputs of a ``rank`` run."""
    if (folder / "ranking.csv").exists() or (folder / "heatmap.png").exists():
        return True
    try:
        return json.loads((folder / "run.json").read_text(encoding="utf-8")).get("command") == "rank"
    except (OSError, ValueError, AttributeError):
        return False


def _probe(folder: Path, out: Path) -> None:
    """Create and remove a file in ``folder``, or raise a CommandError about ``--out``."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".hp_mini-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise CommandError(f"--out: cannot write in {folder} ({err.strerror or err}), so {out} cannot be "
                           "written; choose a folder you can write to") from None


def _check_parent(target: Path, out: Path) -> None:
    """The first existing folder above ``target`` is a folder this process can write in (a probe file)."""
    parent = target.parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CommandError(f"--out: {out} cannot be created: {parent} is a file, not a folder")
    _probe(parent, out)


def _check_out(args: argparse.Namespace) -> None:
    """``--out`` can be written (a probe file in its parent) and replacing it loses nothing.

    Every process of a run checks, before any work: an unwritable ``--out`` is
    reported at once, not after the ranking. ``edit`` never writes into a
    folder that holds a ``rank`` run (its ``run.json`` is the provenance of its
    ``ranking.csv``); an earlier run's results are replaced only with
    ``--overwrite``, and a folder holding other files is never replaced.
    """
    out = args.out
    target = Path(os.path.realpath(out))
    if target.exists() and not target.is_dir():
        raise CommandError(f"--out: {out} exists and is not a folder")
    if target.parent == target:
        raise CommandError(f"--out: {out} is the root of a file system; give a folder inside it")
    cwd = Path(os.path.realpath(os.getcwd()))
    if target == cwd or target in cwd.parents:
        raise CommandError(f"--out: {out} holds the current folder; give a new folder for the results")
    _check_parent(target, out)
    if not target.is_dir():
        return
    if args.command == "edit":
        ranking_dir = None if args.ranking is None else Path(os.path.realpath(args.ranking)).parent
        if target == ranking_dir or _holds_rank_run(target):
            what = "the --ranking file" if target == ranking_dir else "the outputs of a rank run"
            raise CommandError(
                f"--out: {out} holds {what}; edit never writes into a rank run's folder, whose run.json "
                f"records how its ranking.csv was made: give another folder, e.g. {out / 'edit'}"
            )
    ours, others = _results_in(target)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise CommandError(f"--out: {out} holds files that {args.command} does not write ({shown}); results "
                           "replace their folder as a whole, so give a new or empty folder")
    if ours and not args.overwrite:
        raise CommandError(f"--out: {out} holds the results of an earlier run ({', '.join(ours)}); give "
                           "--overwrite to replace them as a whole, or another folder")
    if ours:
        _probe(target, out)


# --------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------- #


def _dataset_spec(spec: str) -> tuple[str, str, str]:
    parts = spec.rsplit(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise CommandError(f"--dataset must be NAME:SPLIT:COLUMN (e.g. trivia_qa:validation:question), got {spec!r}")
    return parts[0], parts[1], parts[2]


def _jsonl_rows(path: Path, what: str | None = None) -> Iterator[tuple[int, dict]]:
    for i, line in iter_lines(path, what=what):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CommandError(f"{path}, line {i}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise CommandError(f"{path}, line {i}: expected a JSON object, got {type(row).__name__}")
        yield i, row


def _field(path: Path, i: int, row: dict, names: tuple[str, ...]):
    for name in names:
        if name in row:
            return row[name]
    raise CommandError(f"{path}, line {i}: no {' or '.join(repr(n) for n in names)} field "
                       f"(fields: {', '.join(map(repr, row)) or 'none'})")


def read_prompts(path: Path, *, what: str | None = None) -> Iterator[str]:
    """Stream the prompts of a ``.txt`` file (one per line, blank lines skipped) or a ``.jsonl`` file
    (a string field ``"prompt"`` or ``"text"`` per line).

    Parameters
    ----------
    path : Path
        The file, read once as UTF-8 (with or without a byte-order mark): a regular file, a named pipe, or
        ``"-"`` for standard input (one prompt per line). A name ending in ``.jsonl`` is read as JSON lines.
    what : str, optional
        The file's flag, for error messages.

    Raises
    ------
    CommandError
        A ``.jsonl`` line that is not a JSON object with a non-empty prompt.
    hp_mini.textfiles.TextFileError
        The file cannot be read or is not UTF-8.
    """
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        for i, row in _jsonl_rows(path, what):
            text = _field(path, i, row, PROMPT_FIELDS)
            if not isinstance(text, str) or not text.strip():
                raise CommandError(f"{path}, line {i}: the prompt must be a non-empty string, got {text!r}")
            yield text
    else:
        for _, line in iter_lines(path, what=what):
            if line.strip():
                yield line


def _dataset_prompts(spec: str) -> Iterator[str]:
    name, split, column = _dataset_spec(spec)
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise CommandError("--dataset needs the 'datasets' package: pip install datasets") from err
    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
        rows = iter(stream)
        first = next(rows, None)
    except Exception as err:  # datasets raises many kinds: offline, not found, bad split
        raise CommandError(
            f"--dataset: could not open {name!r} split {split!r} ({type(err).__name__}: {err}). Without "
            "network, only local dataset folders or files and datasets already in the Hugging Face cache "
            "can be read (set HF_DATASETS_OFFLINE=1); otherwise give --prompts FILE"
        ) from None
    if first is None:
        return
    if column not in first:
        raise CommandError(f"--dataset: {name!r} has no column {column!r}; columns: {', '.join(first)}")
    for i, row in enumerate(_chain(first, rows)):
        text = row[column]
        if not isinstance(text, str) or not text.strip():
            raise CommandError(f"--dataset: row {i} of column {column!r} is not a non-empty string: {text!r}")
        yield text


def _chain(first, rest):
    yield first
    yield from rest


def _limited(it: Iterator[str], limit: int | None) -> Iterator[str]:
    for i, text in enumerate(it):
        if limit is not None and i >= limit:
            return
        yield text


def _prompt_stream(args: argparse.Namespace) -> Iterator[str]:
    source = (read_prompts(args.prompts, what="--prompts") if args.prompts is not None
              else _dataset_prompts(args.dataset))
    return _limited(source, args.limit)


def _read_words(path: Path, what: str) -> list[str]:
    words = [w.strip() for _, w in iter_lines(path, what=what)]
    words = [w for w in words if w and not w.startswith("#")]
    if not words:
        raise CommandError(f"{path} holds no words: give one word per line")
    return words


def _words(args: argparse.Namespace) -> list[str]:
    import hp_mini

    return hp_mini.concept_words(args.concept) if args.concept is not None else _read_words(args.words, "--words")


def _load(args: argparse.Namespace, ctx):
    """The model and tokenizer, through hp_mini.load_model (with accelerate's device_map when asked)."""
    import hp_mini

    dtype = DTYPES[args.dtype]
    if args.device_map is None:
        device = args.device
        if device is None:
            device = f"cuda:{ctx.local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
        return hp_mini.load_model(args.model, dtype=dtype, device=device, progress=not args.quiet)
    if ctx.world_size > 1:
        raise CommandError(
            "--device-map spreads one model over every visible GPU and runs in one process; under "
            f"torchrun ({ctx.world_size} processes) each process holds a whole model on its own GPU: "
            "drop --device-map, or run one process"
        )
    extra = {} if args.offload_folder is None else {"offload_folder": str(args.offload_folder)}
    return hp_mini.load_model(
        args.model, dtype=dtype, device_map=args.device_map, progress=not args.quiet, **extra
    )


# --------------------------------------------------------------------------- #
# Outputs
# --------------------------------------------------------------------------- #


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("hp_mini", "torch", "transformers", "accelerate", "datasets", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _jsonable(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "handler"}


def write_ranking_csv(ranking, path: Path, *, n_labels: int = 5) -> None:
    """``rank, label, layer, head, score, top_atoms``: scores in full float64 precision,
    top atoms as a JSON list of the first ``n_labels`` atoms by coefficient norm."""
    import hp_mini

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["rank", "label", "layer", "head", "score", "top_atoms"])
        for i, (head, score) in enumerate(zip(ranking.heads, ranking.scores.tolist()), 1):
            atoms = ranking.results[head].ordered_labels[:n_labels] if ranking.results else []
            w.writerow([i, hp_mini.head_label(*head), head[0], head[1], repr(float(score)),
                        json.dumps(atoms, ensure_ascii=False)])


def read_ranking_csv(path: Path) -> list[tuple[int, int]]:
    """The heads of a ``ranking.csv``, best first.

    Parameters
    ----------
    path : Path
        A ``ranking.csv`` written by ``rank`` (UTF-8, with or without a byte-order mark).

    Returns
    -------
    list of (layer, head)

    Raises
    ------
    CommandError
        No ``rank``, ``layer`` and ``head`` columns, a value that is not an integer, or a head listed twice.
    hp_mini.textfiles.TextFileError
        The file cannot be read or is not UTF-8.
    """
    import hp_mini

    reader = csv.DictReader(io.StringIO(read_text(path, what="--ranking"), newline=""))
    rows = []
    for row in reader:
        rows.append((reader.line_num, row))
    if not rows or not {"rank", "layer", "head"} <= set(rows[0][1]):
        raise CommandError(f"--ranking: {path} is not a ranking.csv written by 'rank' "
                           "(it needs rank, layer and head columns)")
    try:
        rows.sort(key=lambda r: int(r[1]["rank"]))
        heads = [((int(r["layer"]), int(r["head"])), line) for line, r in rows]
    except (ValueError, TypeError):
        raise CommandError(f"--ranking: {path} has a rank, layer or head that is not an integer") from None
    lines: dict[tuple[int, int], list[int]] = {}
    for head, line in heads:
        lines.setdefault(head, []).append(line)
    twice = {head: found for head, found in lines.items() if len(found) > 1}
    if twice:
        listed = "; ".join(f"{hp_mini.head_label(*head)} (layer {head[0]}, head {head[1]}) on lines "
                           f"{', '.join(map(str, sorted(found)))}" for head, found in list(twice.items())[:5])
        raise CommandError(f"--ranking: {path} lists a head more than once: {listed}. A ranking holds each "
                           "head once; write it again with 'rank'")
    return [head for head, _ in heads]


def write_heatmap(ranking, acts, path: Path, title: str) -> None:
    """Scores as a layers x heads image (matplotlib's Agg canvas; no display needed)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = np.full((acts.n_layers, acts.n_heads), np.nan)
    row = {layer: i for i, layer in enumerate(acts.layers)}
    for (layer, head), score in zip(ranking.heads, ranking.scores.tolist()):
        grid[row[layer], head] = score
    fig = Figure(figsize=(max(4.0, 0.35 * acts.n_heads + 2), max(3.0, 0.25 * acts.n_layers + 1.5)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(grid, aspect="auto", cmap="viridis", origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_yticks(range(acts.n_layers), [str(layer) for layer in acts.layers])
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="EVR")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _new_folder(target: Path, marker: str) -> Path:
    """A new folder ``NAME.MARKER-XXXXXXXX`` beside ``target``."""
    while True:
        folder = target.with_name(f"{target.name}.{marker}-{secrets.token_hex(4)}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def _publish(staging: Path, target: Path) -> None:
    """Rename the complete ``staging`` folder to ``target``, replacing an earlier run's folder as a whole."""
    if not target.is_dir():
        os.rename(staging, target)
        return
    if not any(target.iterdir()):
        target.rmdir()
        os.rename(staging, target)
        return
    old = _new_folder(target, "replaced")
    old.rmdir()
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_outputs(args: argparse.Namespace, ctx, result: dict) -> None:
    """Write the results and ``run.json`` into a temporary folder beside ``--out``, then rename it into place.

    An interrupted or failed write removes the temporary folder and leaves ``--out`` as it was.
    """
    write = result.pop("write")
    timings = result["timings"]
    target = Path(os.path.realpath(args.out))
    start = time.perf_counter()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = _new_folder(target, "incomplete")
    except OSError as err:
        raise CommandError(f"--out: cannot write beside {args.out} ({err.strerror or err})") from None
    placed = False
    try:
        write(staging)
        timings["write_s"] = time.perf_counter() - start
        timings["total_s"] += timings["write_s"]
        run = {"command": args.command, "argv": sys.argv, "arguments": _jsonable(args),
               "versions": _versions(),
               "processes": {"world_size": ctx.world_size, "backend": ctx.backend,
                             "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                             "torch_threads": torch.get_num_threads()},
               **result}
        (staging / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
        try:
            _check_out(args)  # --out may have changed during the run
        except CommandError as err:
            kept = _new_folder(target, "unplaced")
            kept.rmdir()
            os.rename(staging, kept)
            placed = True
            raise CommandError(f"{err}. The complete results of this run are in {kept}") from None
        _publish(staging, target)
        placed = True
    except OSError as err:
        raise CommandError(f"--out: writing the results failed ({err.strerror or err}); {args.out} is as "
                           "it was") from None
    finally:
        if not placed:
            shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- #
# Commands
# --------------------------------------------------------------------------- #


def _record_and_rank(args, model, tokenizer, ctx, timings: dict, words: list[str], *, rank: bool = True):
    import hp_mini
    from hp_mini.rank.distributed import rank_heads_distributed
    from hp_mini.record.stream import record_stream
    from hp_mini.rank.ranking import check_ranking_inputs

    progress = not args.quiet
    start = time.perf_counter()
    try:
        dictionary = hp_mini.unembedding_dictionary(model, tokenizer, words)
    except ValueError as err:
        flag = "--concept" if args.concept is not None else "--words"
        raise CommandError(f"{flag}: no dictionary for {args.model}: {err}") from None
    timings["dictionary_s"] = time.perf_counter() - start

    start = time.perf_counter()
    store = "samples" if args.criterion == "l1" else "moments"
    acts = record_stream(model, tokenizer, _prompt_stream(args), pool=args.pool, batch_size=args.batch_size,
                         store=store, chunk_batches=args.chunk_batches, ctx=ctx, progress=progress)
    timings["record_s"] = time.perf_counter() - start
    try:  # n_atoms is capped at the dictionary's size, with a warning
        _, n_atoms = check_ranking_inputs(acts, dictionary, n_atoms=args.n_atoms if rank else None)
    except ValueError as err:
        raise CommandError(str(err)) from None
    ranking = None
    if rank:
        start = time.perf_counter()
        ranking = rank_heads_distributed(acts, dictionary, n_atoms=n_atoms, criterion=args.criterion,
                                         ctx=ctx, progress=progress)
        timings["pursuit_s"] = time.perf_counter() - start
    return acts, dictionary, ranking, n_atoms


def _run_rank(args, ctx) -> dict:
    """Rank the heads; the result's ``"write"`` writes the outputs into a folder (on rank 0)."""
    _check_single_reader(args, ctx)
    words = _words(args)  # read before any work
    timings: dict[str, float] = {}
    start = time.perf_counter()
    model, tokenizer = _load(args, ctx)
    timings["load_s"] = time.perf_counter() - start
    acts, dictionary, ranking, n_atoms = _record_and_rank(args, model, tokenizer, ctx, timings, words)
    info = {"n_prompts": acts.n_prompts, "n_atoms_in_dictionary": len(dictionary),
            "n_atoms_asked": args.n_atoms, "n_atoms_used": n_atoms,
            "missing_words": list(dictionary.missing), "heads": len(ranking)}
    concept = args.concept or args.words.name
    title = (f"{type(model).__name__}: {concept}\nSOMP {args.criterion}, {n_atoms} atoms"
             f"{'' if n_atoms == args.n_atoms else f' ({args.n_atoms} asked)'}, {acts.n_prompts} prompts")

    def write(folder: Path) -> None:
        write_ranking_csv(ranking, folder / "ranking.csv")
        write_heatmap(ranking, acts, folder / "heatmap.png", title)

    return {"info": info, "timings": timings, "write": write}


def _sharded_evaluator(evaluate_shard, n_total: int, ctx):
    """An evaluator of the whole set from one that scores this rank's share (means, weighted by size)."""
    from hp_mini.parallel import all_reduce_sum

    def evaluate() -> dict[str, float]:
        local = evaluate_shard()  # (dict of means, count)
        means, count = local
        names = sorted(means)
        totals = torch.tensor([means[m] * count for m in names], dtype=torch.float64)
        totals = all_reduce_sum(totals, ctx)
        return {m: float(v) / n_total for m, v in zip(names, totals.tolist())}

    return evaluate


def _eval_inputs(args) -> tuple[list[str], list]:
    """The evaluation's prompts, and their answers (``--qa``) or the keywords (``--keywords``), read before
    any work."""
    if args.qa is not None:
        prompts, answers = [], []
        for i, row in _jsonl_rows(args.qa, "--qa"):
            prompt = _field(args.qa, i, row, QUESTION_FIELDS)
            answer = _field(args.qa, i, row, ANSWER_FIELDS)
            answer = [answer] if isinstance(answer, str) else answer
            if not isinstance(prompt, str) or not prompt.strip():
                raise CommandError(f"{args.qa}, line {i}: the prompt must be a non-empty string")
            if not isinstance(answer, list) or not answer or not all(isinstance(a, str) for a in answer):
                raise CommandError(f"{args.qa}, line {i}: answers must be a string or a non-empty list of strings")
            prompts.append(prompt)
            answers.append(answer)
        if not prompts:
            raise CommandError(f"--qa: {args.qa} holds no questions")
        return prompts, answers
    words = _read_words(args.keywords, "--keywords")
    prompts = list(read_prompts(args.eval_prompts, what="--eval-prompts"))
    if not prompts:
        raise CommandError(f"--eval-prompts: {args.eval_prompts} holds no prompts")
    return prompts, words


def _edit_evaluator(args, model, tokenizer, ctx, prompts: list[str], answers_or_words: list):
    from hp_mini import generate
    from hp_mini.experiments.words import lexical_rate
    from hp_mini.experiments.evaluators import qa_evaluator

    if args.qa is not None:
        answers = answers_or_words
        mine = list(range(ctx.rank, len(prompts), ctx.world_size))
        shard = qa_evaluator(model, tokenizer, [prompts[i] for i in mine], [answers[i] for i in mine],
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size) if mine else None

        def local():
            return (shard() if shard is not None else {"f1": 0.0}), len(mine)

        return _sharded_evaluator(local, len(prompts), ctx), len(prompts)

    words = answers_or_words
    mine = [prompts[i] for i in range(ctx.rank, len(prompts), ctx.world_size)]

    def local():
        if not mine:
            return {"keywords": 0.0}, 0
        texts = generate(model, tokenizer, mine, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        return {"keywords": lexical_rate(texts, words)}, len(mine)

    return _sharded_evaluator(local, len(prompts), ctx), len(prompts)


def _run_edit(args, ctx) -> dict:
    import hp_mini
    from hp_mini.experiments.tables import edit_table
    from hp_mini.experiments.driver import evaluate_head_edits

    _check_single_reader(args, ctx)
    words = _words(args)  # the small input files are read before any work
    somp_heads = read_ranking_csv(args.ranking) if args.ranking is not None else None
    eval_inputs = _eval_inputs(args)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    model, tokenizer = _load(args, ctx)
    timings["load_s"] = time.perf_counter() - start
    acts, dictionary, ranking, n_atoms = _record_and_rank(args, model, tokenizer, ctx, timings, words,
                                                          rank=args.ranking is None)
    if somp_heads is not None:
        unknown = sorted(set(somp_heads) - set(acts.heads))
        if unknown:
            raise CommandError(f"--ranking: heads {unknown[:5]} are not heads of {args.model} "
                               f"(layers {acts.layers[0]}..{acts.layers[-1]}, {acts.n_heads} heads each)")
    else:
        somp_heads = ranking.heads
    if max(args.k) > len(somp_heads):
        raise CommandError(f"--k: {max(args.k)} heads asked for, but the ranking has {len(somp_heads)}")
    lens = hp_mini.rank_heads(acts, dictionary, method="logit_lens", progress=False)
    evaluate, n_eval = _edit_evaluator(args, model, tokenizer, ctx, *eval_inputs)
    start = time.perf_counter()
    table = evaluate_head_edits(model, evaluate, {"SOMP": somp_heads, "logit lens": lens.heads}, ks=args.k,
                                alpha=args.alpha, control_pool=acts.heads, n_random=args.n_random, seed=args.seed,
                                progress=not args.quiet and ctx.is_main)
    timings["edits_s"] = time.perf_counter() - start
    info = {"n_prompts": acts.n_prompts, "n_eval": n_eval, "somp_top": [list(h) for h in somp_heads[:max(args.k)]],
            "logit_lens_top": [list(h) for h in lens.heads[:max(args.k)]]}
    if ranking is not None:
        info.update(n_atoms_asked=args.n_atoms, n_atoms_used=n_atoms)

    def write(folder: Path) -> None:
        table.to_csv(folder / "edits.csv", index=False)
        edit_table(table).to_csv(folder / "summary.csv")

    return {"info": info, "timings": timings, "write": write}


def _check_train_out(args: argparse.Namespace) -> None:
    """``train``'s ``--out`` is a new ``.safetensors`` file (or an earlier one, with ``--overwrite``) we can write."""
    from hp_mini.vision.llava import TRAINING_RECORD

    out = args.out
    target = Path(os.path.realpath(out))
    if target.is_dir():
        raise CommandError(f"--out: {out} is a folder; give the weights file to write, e.g. {out / 'weights.safetensors'}")
    if target.suffix != ".safetensors" or target.name == TRAINING_RECORD:
        raise CommandError(f"--out: {out} is not a .safetensors file name; give e.g. {out.with_suffix('.safetensors')}")
    existing = [p for p in (target, target.with_name(TRAINING_RECORD)) if p.exists() or p.is_symlink()]
    for p in existing:
        if not p.is_file():
            raise CommandError(f"--out: {p} exists and is not a file; give another --out")
    if existing and not args.overwrite:
        verb, them = ("exists", "it") if len(existing) == 1 else ("exist", "them")
        raise CommandError(f"--out: {' and '.join(str(p) for p in existing)} already {verb}: give --overwrite to "
                           f"replace {them}, or another --out")
    _check_parent(target, out)


def _train_command(args: argparse.Namespace) -> str:
    """The ``train`` command line that gives the same training as ``args`` (recorded in training.json)."""
    words = ["python -m hp_mini train", args.name, "--threads", str(args.threads)]
    words += ["--tiny"] * args.tiny
    for flag, value in (("--steps", args.steps), ("--tower-steps", args.tower_steps)):
        words += [flag, str(value)] if value is not None else []
    return " ".join(words)


def run_train(args: argparse.Namespace) -> int:
    """Run a parsed ``train`` command: train, then write ``--out`` and ``training.json``, whole or not at all."""
    from hp_mini.vision import llava

    recipe = llava.llava_recipe(args.name)
    if args.out is None:
        args.out = Path(args.name) / "weights.safetensors"
    _check_train_out(args)
    settings = dict(llava.TINY) if args.tiny else {}
    if args.steps is not None:
        settings["steps"] = args.steps
    if args.tower_steps is not None:
        settings["clip_steps"] = args.tower_steps
    model, _, log = llava.train(settings, threads=args.threads, progress=not args.quiet, recipe=recipe)
    _check_train_out(args)  # --out may have changed during the training
    target = Path(os.path.realpath(args.out))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sha = llava.save_trained(model, target, log, command=_train_command(args), recipe=recipe)
    except OSError as err:
        raise CommandError(f"--out: writing {args.out} failed ({err.strerror or err}); nothing was replaced") from None
    print(f"hp_mini train {args.name}: wrote {args.out} and {target.with_name(llava.TRAINING_RECORD).name} "
          f"(SHA-256 {sha}, {log['seconds']:.1f} s on {args.threads} thread{'s' if args.threads > 1 else ''})")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed ``rank`` or ``edit`` command; rank 0 writes its outputs and ``run.json``, whole or not at all."""
    from hp_mini.parallel import DistributedError, barrier, init_distributed, shutdown_distributed

    _check(args)
    ctx = init_distributed()
    started = time.perf_counter()
    try:
        result = (_run_rank if args.command == "rank" else _run_edit)(args, ctx)
        result["timings"]["total_s"] = time.perf_counter() - started
        if ctx.is_main:
            _write_outputs(args, ctx, result)
            if not args.quiet:
                print(f"hp_mini {args.command}: wrote {args.out} ({result['timings']['total_s']:.1f} s, "
                      f"{ctx.world_size} process{'es' if ctx.world_size > 1 else ''})", file=sys.stderr)
        barrier(ctx)  # the outputs are written when any rank returns
    except DistributedError as err:  # another rank failed, or the ranks read different prompts
        shutdown_distributed(ctx, failed=True)
        raise CommandError(str(err)) from None
    except BaseException:
        shutdown_distributed(ctx, failed=True)  # no barrier: the other ranks may wait elsewhere, or be gone
        raise
    shutdown_distributed(ctx)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hp_mini rank|edit|train ...`` on its own (the package's ``__main__`` dispatches here too)."""
    parser = argparse.ArgumentParser(prog="python -m hp_mini", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return dispatch(args, parser)


def dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``args`` and turn a :class:`CommandError` into an argparse error (exit status 2)."""
    from hp_mini.model.loading import ModelNotAvailableError

    sub = f"{parser.prog} {args.command}"
    train = args.command == "train"
    try:
        return run_train(args) if train else run_command(args)
    except (CommandError, TextFileError) as err:
        print(f"{sub}: error: {err}", file=sys.stderr)
        return 2
    except ModelNotAvailableError as err:
        print(f"{sub}: error: {'' if train else '--model: '}{err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
