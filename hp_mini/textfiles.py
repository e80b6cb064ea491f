"""Read text files as UTF-8, with or without a byte-order mark, and say clearly when they are not.

A file that is not UTF-8 (Latin-1, UTF-16, binary) is refused with a
:class:`TextFileError` that names the file, the byte offset and line of the
first bad byte, and how to convert the file (``iconv``). A UTF-8 byte-order
mark at the start is dropped. Lines are split as Python's text mode splits
them (``\\n``, ``\\r\\n`` or ``\\r``).

Files are read once, from the start, so named pipes work, and the path ``-``
(:data:`STDIN`) reads standard input.

Example
-------
>>> from hp_mini.textfiles import iter_lines
>>> for number, line in iter_lines("prompts.txt", what="--prompts"):  # doctest: +SKIP
...     print(number, line)
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["STDIN", "TextFileError", "iter_lines", "read_text"]

STDIN = "-"
"""The path that stands for standard input."""

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class TextFileError(ValueError):
    """A text file cannot be read, or is not UTF-8; the message says how to fix it."""


def _is_stdin(path: str | os.PathLike) -> bool:
    return os.fspath(path) == STDIN


def _name(path: str | os.PathLike) -> str:
    return "standard input" if _is_stdin(path) else os.fspath(path)


def _prefix(what: str | None) -> str:
    return f"{what}: " if what else ""


def _convert_hint(path: str | os.PathLike, source: str) -> str:
    if _is_stdin(path):
        return f"pipe it through iconv -f {source} -t utf-8"
    p = Path(path)
    target = p.with_name(f"{p.stem}.utf8{p.suffix}")
    return f"convert it, e.g. iconv -f {source} -t utf-8 {shlex.quote(str(p))} > {shlex.quote(str(target))}"


def _bad_byte(path, what: str | None, data: bytes, offset: int, index: int, line: int) -> TextFileError:
    """The error for ``data[index]``, the byte at ``offset`` in the file, on line ``line``."""
    byte = data[index]
    where = f"byte {offset} (line {line})"
    if byte == 0:
        return TextFileError(
            f"{_prefix(what)}{_name(path)} is not UTF-8 text: {where} is a NUL byte (0x00); it looks "
            f"binary, or UTF-16 without a byte-order mark. hp_mini reads UTF-8 text; if it is UTF-16, "
            f"{_convert_hint(path, 'utf-16le')}"
        )
    return TextFileError(
        f"{_prefix(what)}{_name(path)} is not UTF-8 text: {where} is 0x{byte:02X}, which UTF-8 does not "
        f"allow there (Latin-1 or Windows-1252 text?). hp_mini reads UTF-8 text (with or without a "
        f"byte-order mark); {_convert_hint(path, 'latin1')}"
    )


def _utf16_error(path, what: str | None) -> TextFileError:
    return TextFileError(
        f"{_prefix(what)}{_name(path)} is UTF-16 text (byte 0 starts a UTF-16 byte-order mark); hp_mini "
        f"reads UTF-8 text: {_convert_hint(path, 'utf-16')}"
    )


def _decode(path, what: str | None, raw: bytes, offset: int, line: int) -> str:
    """Decode bytes that start at byte ``offset`` and on line ``line`` of the file."""
    nul = raw.find(b"\0")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        index = err.start if nul < 0 else min(err.start, nul)
    else:
        if nul < 0:
            return text
        index = nul
    raise _bad_byte(path, what, raw, offset + index, index, line + raw.count(b"\n", 0, index))


def _open(path: str | os.PathLike, what: str | None) -> BinaryIO:
    if _is_stdin(path):
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as err:
        raise TextFileError(f"{_prefix(what)}cannot read {_name(path)}: {err.strerror or err}") from None


def _split(text: str) -> list[str]:
    """One ``\\n``-terminated line into text-mode lines (``\\r\\n`` and a lone ``\\r`` end lines too)."""
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    elif text.endswith("\r"):
        text = text[:-1]
    return text.split("\r")


def _without_bom(path, what: str | None, head: bytes) -> tuple[bytes, int]:
    """The file's first bytes without a UTF-8 byte-order mark, and the offset they start at."""
    if head.startswith(_UTF16_BOMS):
        raise _utf16_error(path, what)
    if head.startswith(_UTF8_BOM):
        return head[len(_UTF8_BOM):], len(_UTF8_BOM)
    return head, 0


def iter_lines(path: str | os.PathLike, *, what: str | None = None) -> Iterator[tuple[int, str]]:
    """Stream the lines of a UTF-8 text file, read once.

    Parameters
    ----------
    path : str or path-like
        The file (a regular file or a named pipe), or ``"-"`` for standard input.
    what : str, optional
        What the file is, for error messages (e.g. ``"--prompts"``).

    Yields
    ------
    number : int
        The line's number, from 1.
    line : str
        The line without its line ending; a UTF-8 byte-order mark at the start
        of the file is dropped.

    Raises
    ------
    TextFileError
        The file cannot be opened or read, starts with a UTF-16 byte-order
        mark, or holds a byte that is not UTF-8 text (a NUL byte included).
    """
    f = _open(path, what)
    try:
        offset = 0
        number = 0
        for raw in f:
            start = offset
            offset += len(raw)
            if start == 0:
                raw, start = _without_bom(path, what, raw)
            text = _decode(path, what, raw, start, number + 1)
            for line in _split(text):
                number += 1
                yield number, line
    except OSError as err:
        raise TextFileError(f"{_prefix(what)}cannot read {_name(path)}: {err.strerror or err}") from None
    finally:
        if not _is_stdin(path):
            f.close()


def read_text(path: str | os.PathLike, *, what: str | None = None) -> str:
    """The whole text of a UTF-8 file, a UTF-8 byte-order mark dropped, line endings kept.

    Parameters
    ----------
    path, what
        As in :func:`iter_lines` (e.g. ``what="--ranking"``).

    Returns
    -------
    str

    Raises
    ------
    TextFileError
        As :func:`iter_lines`.
    """
    f = _open(path, what)
    try:
        data = f.read()
    except OSError as err:
        raise TextFileError(f"{_prefix(what)}cannot read {_name(path)}: {err.strerror or err}") from None
    finally:
        if not _is_stdin(path):
            f.close()
    data, start = _without_bom(path, what, data)
    return _decode(path, what, data, start, 1)
