"""The cache of converted and trained models: atomic writes that can be checked later.

Every cached model is a folder under :func:`cache_dir`. :func:`write_atomically`
fills a hidden temporary sibling (``.<name>.tmp-XXXXXXXX``, holding a writer file
with the process id), writes a manifest last (each file's size, modification
time and SHA-256) and renames the folder into place. So a folder that is there
was written completely, and :func:`find_damage` can tell later whether anything
in it changed.

The check is cheap on the normal path: it compares each file's size and
modification time with the manifest (a few ``stat`` calls). A file whose time
changed is hashed in full; ``full=True`` hashes every file (about 1 s per GB).
Hidden temporaries left by killed processes are removed by
:func:`remove_stale_temporaries`, which :func:`write_atomically` and
:func:`ensure_cached` call before they start.

Example
-------
>>> from hp_mini.cache import cache_dir, ensure_cached
>>> folder = ensure_cached(cache_dir() / "example",
...                        lambda tmp: (tmp / "a.txt").write_text("hi"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "MANIFEST",
    "DamagedCacheError",
    "STALE_AFTER_S",
    "cache_dir",
    "ensure_cached",
    "find_damage",
    "remove_stale_temporaries",
    "write_atomically",
]

MANIFEST = "hp_mini-manifest.json"
"""File name of the manifest that :func:`write_atomically` writes last in each cached folder."""

STALE_AFTER_S = 3600.0
"""A hidden temporary without a live writer is removed once it is this old (seconds)."""



class DamagedCacheError(OSError):
    """A cached folder is damaged and what it was built from is not available."""


_WRITER = ".hp_mini-writer.json"
# Hidden temporaries: ".<name>.tmp-XXXXXXXX" (being written), ".<name>.old-XXXXXXXX" (a
# damaged folder moved aside), and ".<name>.XXXXXXXX" (written by earlier versions).
_TEMPORARY = re.compile(r"^\..+\.(?:tmp-|old-)?[a-z0-9_]{8}$")
_CHUNK = 1 << 24


def cache_dir() -> Path:
    """Where hp_mini caches converted and trained models.

    Returns
    -------
    pathlib.Path
        ``$HP_MINI_CACHE`` when set, else ``~/.cache/hp_mini``.
    """
    root = os.environ.get("HP_MINI_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "hp_mini"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _manifest_of(folder: Path) -> dict:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in (MANIFEST, _WRITER):
            st = path.stat()
            files[path.relative_to(folder).as_posix()] = {
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": _sha256(path),
            }
    return {"format": 1, "files": files}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def find_damage(folder: str | os.PathLike, *, full: bool = False) -> str | None:
    """Check a cached folder against the manifest written with it.

    Parameters
    ----------
    folder : str or path-like
        A folder written by :func:`write_atomically`.
    full : bool, default False
        Hash every file. By default only files whose size or modification time
        differ from the manifest are hashed (a file rewritten in place gets a
        new time, so garbled bytes of the same size are still found).

    Returns
    -------
    str or None
        ``None`` when the folder is intact, else what is wrong, in words.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"it has no {MANIFEST} (written by an older hp_mini, or cut short)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    restamp = False
    for rel, want in files.items():
        path = folder / rel
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"{rel} is missing"
        if st.st_size != want["size"]:
            return f"{rel} has {st.st_size} bytes instead of {want['size']}"
        if full or st.st_mtime_ns != want["mtime_ns"]:
            if _sha256(path) != want["sha256"]:
                return f"{rel} has changed since it was written (its SHA-256 differs)"
            if st.st_mtime_ns != want["mtime_ns"]:  # copied, or touched: same bytes
                want["mtime_ns"], restamp = st.st_mtime_ns, True
    if restamp:  # remember the new times so that the next check is cheap again
        with contextlib.suppress(OSError):
            _write_json(folder / MANIFEST, manifest)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True
    return True


def _in_use(tmp: Path, now: float) -> bool:
    try:
        writer = json.loads((tmp / _WRITER).read_text())
        if writer.get("host") == socket.gethostname():
            return _pid_alive(int(writer["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # No writer we can ask (an older hp_mini, another machine, or the instant before
    # the rename): wait until it has not changed for a while.
    try:
        return now - tmp.stat().st_mtime < STALE_AFTER_S
    except FileNotFoundError:
        return True


def remove_stale_temporaries(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove hidden temporary folders that killed writes left in the cache.

    A temporary is removed when its writer process (same machine) is gone, or,
    when there is no writer to ask, when it is older than :data:`STALE_AFTER_S`.
    Folders moved aside as damaged are always removed.

    Parameters
    ----------
    root : str or path-like, optional
        The cache folder; default :func:`cache_dir`.

    Returns
    -------
    list of pathlib.Path
        The folders removed.
    """
    root = Path(root) if root is not None else cache_dir()
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not _TEMPORARY.match(entry.name) or not entry.is_dir() or entry.is_symlink():
            continue
        if ".old-" in entry.name or not _in_use(entry, now):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _remove(folder: Path) -> None:
    """Rename ``folder`` aside (one atomic step), then delete it."""
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.replace(folder, aside / "damaged")
    shutil.rmtree(aside, ignore_errors=True)


def write_atomically(final: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Create the folder ``final`` by filling a temporary sibling and renaming it.

    ``fill(tmp)`` writes everything into ``tmp``; then the manifest that
    :func:`find_damage` reads is written, and ``tmp`` is renamed to ``final``.
    If ``fill`` raises, nothing is left behind. If ``final`` exists and is intact
    (another process finished first), it is kept; if it is damaged, it is replaced.

    Parameters
    ----------
    final : str or path-like
        The folder to create.
    fill : callable
        ``fill(tmp: pathlib.Path) -> None``.

    Returns
    -------
    pathlib.Path
        ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        (tmp / _WRITER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        fill(tmp)
        (tmp / _WRITER).unlink()
        _write_json(tmp / MANIFEST, _manifest_of(tmp))
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():
                raise
            if find_damage(final, full=True) is not None:  # replace a damaged folder, keep a good one
                _remove(final)
                os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def _lock(final: Path):
    """Hold an exclusive lock on ``final`` (POSIX), so that one process builds it."""
    try:
        import fcntl
    except ImportError:  # no advisory locks: concurrent builds still end with one good folder
        yield
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_cached(
    final: str | os.PathLike,
    fill: Callable[[Path], None],
    *,
    source: Callable[[], object] | None = None,
    full: bool = False,
    what: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> Path:
    """Return the intact cached folder ``final``, building or rebuilding it when needed.

    Parameters
    ----------
    final : str or path-like
        The cached folder.
    fill : callable
        ``fill(tmp)`` writes the folder's files into ``tmp`` (see :func:`write_atomically`).
    source : callable, optional
        Called before building; raises (an ``OSError``) when what ``fill`` needs is
        not available. A damaged folder then is reported, with the command that
        removes it, instead of being rebuilt.
    full : bool, default False
        Hash every file of an existing folder (see :func:`find_damage`).
    what : str, optional
        The model's name in messages; default the folder's name.
    announce : callable, optional
        ``announce(message)`` before a first build (e.g. ``print``).

    Returns
    -------
    pathlib.Path
        ``final``.

    Raises
    ------
    DamagedCacheError
        When the folder is damaged and ``source`` says it cannot be rebuilt;
        the message names the folder and the command that removes it.
    OSError
        What ``source`` raises, when there is no folder yet.

    Warns
    -----
    RuntimeWarning
        When a damaged folder is rebuilt; the message says what was wrong.
    """
    final = Path(final)
    what = what or final.name
    remove_stale_temporaries(final.parent)
    if final.exists() and find_damage(final, full=full) is None:
        return final
    with _lock(final):
        problem = find_damage(final, full=full) if final.exists() else None
        if final.exists() and problem is None:  # another process built it meanwhile
            return final
        if source is not None:
            try:
                source()
            except OSError as err:
                if problem is None:
                    raise
                raise DamagedCacheError(
                    f"the cached {what} at {final} is damaged ({problem}) and cannot be rebuilt: {err}\n"
                    f"Remove it with: rm -rf '{final}'"
                ) from err
        if problem is not None:
            warnings.warn(
                f"hp_mini: the cached {what} at {final} is damaged ({problem}); rebuilding it",
                RuntimeWarning,
                stacklevel=3,
            )
            _remove(final)
        elif announce is not None:
            announce(f"hp_mini: building {what} in {final} (once)...")
        return write_atomically(final, fill)
