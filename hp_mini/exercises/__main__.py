"""Exercises on the command line, for instructors.

    python -m hp_mini.exercises student book/03_pursuing_heads.md -o 03_pursuing_heads.ipynb
    python -m hp_mini.exercises grade STUDENT.ipynb [MORE.ipynb ...] [--source book/CHAPTER.md] [--json] [--csv SCORES.csv] [--timeout 600]
    python -m hp_mini.exercises assignment           # every exercise of the book, by chapter
    python -m hp_mini.exercises list                 # every exercise and its checker
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _student(args) -> int:
    import nbformat

    from hp_mini.exercises.notebooks import student_notebook

    sources = [Path(s) for s in args.sources]
    out = Path(args.output)
    if len(sources) > 1 or out.suffix != ".ipynb":
        out.mkdir(parents=True, exist_ok=True)
        targets = [out / f"{s.stem}.ipynb" for s in sources]
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        targets = [out]
    for source, target in zip(sources, targets):
        nb = student_notebook(source)
        nbformat.validate(nb)
        nbformat.write(nb, target)
        print(f"{source} -> {target} ({len(nb.cells)} cells, solutions removed)")
    return 0


def _grade(args) -> int:
    from hp_mini.exercises.grading import GradingError, gradebook_csv, grade_notebook

    reports, failed = [], 0
    for path in args.notebooks:
        try:
            reports.append(grade_notebook(path, source=args.source, timeout=args.timeout))
        except GradingError as err:
            failed += 1
            print(f"cannot grade {path}: {err}", file=sys.stderr)
    if args.csv and reports:
        Path(args.csv).write_text(gradebook_csv(reports), encoding="utf-8")
        print(f"scores of {len(reports)} notebook(s) written to {args.csv}", file=sys.stderr)
    if args.json:
        print(json.dumps([json.loads(r.to_json()) for r in reports], indent=2, ensure_ascii=False))
    else:
        for r in reports:
            print(r)
            for err in r.errors:
                print(f"  note: {err}")
    if failed:
        print(f"{failed} of {len(args.notebooks)} notebook(s) could not be graded (see above)", file=sys.stderr)
    return 1 if failed else 0


def _assignment(args) -> int:
    from hp_mini.exercises.assignment import book_exercises, render_exercise_list

    print(render_exercise_list(book_exercises(args.root)))
    return 0


def _list(args) -> int:
    from hp_mini.exercises import exercises

    for name in exercises():
        print(name)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hp_mini.exercises", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("student", help="make the student version of chapters (no solutions, no outputs)")
    p.add_argument("sources", nargs="+", help="chapter sources (.md) or notebooks (.ipynb)")
    p.add_argument("-o", "--output", required=True, help="an .ipynb file (one source) or a folder")
    p.set_defaults(run=_student)

    p = sub.add_parser("grade", help="run students' notebooks without solutions and score each exercise")
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--source", default="book",
                   help="the instructor's chapter the notebooks answer (book/CHAPTER.md), or a folder of chapters "
                        "in which to find each notebook's (default: book)")
    p.add_argument("--timeout", type=int, default=600,
                   help="seconds one cell, or one call of a student's function, may run (default 600)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--csv", metavar="PATH", help="also write a gradebook CSV: one row per student (file name)")
    p.set_defaults(run=_grade)

    p = sub.add_parser("assignment", help="print the list of every exercise (as on book/assignment.md)")
    p.add_argument("--root", default=".", help="the book's root (with _toc.yml)")
    p.set_defaults(run=_assignment)

    p = sub.add_parser("list", help="the names of all exercises that have a checker")
    p.set_defaults(run=_list)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
