"""Command line: ``python -m hp_mini prepare`` converts and caches the embedded model."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hp_mini", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="convert the embedded SmolLM2 GGUF to a cached safetensors model")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        from .models import prepare_smollm2

        print(f"hp_mini: SmolLM2 ready at {prepare_smollm2()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
