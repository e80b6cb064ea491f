"""Command line: ``python -m hp_mini prepare [NAME ...] [--verify]``, and ``rank``, ``edit``, ``train`` (:mod:`hp_mini.cli`).

``prepare`` converts the embedded models' GGUF files once and caches them
(all of them unless names are given). ``--verify`` checks every file in each
cached folder against the manifest written with it (a file it does not list
is damage, too), hashing them all, and rebuilds what is damaged. A cache
folder hp_mini did not make, a cache that is not writable, or another
``prepare`` that holds the lock and has stopped is reported with what to do;
see :mod:`hp_mini.model.cache`.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from hp_mini.model.loading import (
        EMBEDDED_MODELS,
        GEMMA_TERMS_NOTICE,
        ModelNotAvailableError,
        prepare_model,
    )

    parser = argparse.ArgumentParser(prog="python -m hp_mini", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="convert and cache the embedded models (GGUF -> safetensors)")
    prepare.add_argument("names", nargs="*", metavar="NAME",
                         help=f"models to prepare; default all: {', '.join(EMBEDDED_MODELS)}")
    prepare.add_argument("--verify", action="store_true",
                         help="check every file of the cache against its manifest (hashing them all) "
                              "and rebuild what is damaged")
    from hp_mini.cli import COMMANDS, add_commands, dispatch

    add_commands(sub)
    args = parser.parse_args(argv)
    if args.command in COMMANDS:
        return dispatch(args, parser)
    if args.command == "prepare":
        unknown = [n for n in args.names if n not in EMBEDDED_MODELS]
        if unknown:
            parser.error(f"unknown model {', '.join(unknown)}: choose from {', '.join(EMBEDDED_MODELS)}")
        failed = 0
        for name in args.names or EMBEDDED_MODELS:
            start = time.perf_counter()
            try:
                folder = prepare_model(name, verify=args.verify)
            except ModelNotAvailableError as err:
                print(f"hp_mini: {name}: {err}", file=sys.stderr)
                failed += 1
                continue
            print(f"hp_mini: {name} ready at {folder} ({time.perf_counter() - start:.1f} s)")
            if name == "gemma3-270m":
                print(f"hp_mini: {GEMMA_TERMS_NOTICE}.")
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
