"""The cache of converted and trained models: atomic writes that can be checked later.

Every cached model is a folder under :func:`cache_dir`, made by
:func:`ensure_cached` (or :func:`write_atomically`), and read through
:func:`load_cached`. The rules:

Writing
    A folder is filled in a hidden temporary sibling named
    ``.hp_mini-tmp-<name>-XXXXXXXX``, which holds a writer file
    (``.hp_mini-writer.json``: the writing process's id and machine) from the
    moment it exists. Then :data:`MARKER` and the manifest (:data:`MANIFEST`:
    each file's size, modification time and SHA-256) are written, and the
    temporary is renamed into place. So a folder that is there was written
    completely, and :func:`find_damage` can tell later whether anything in it
    changed.
Checking
    :func:`find_damage` compares every file in the folder with the manifest:
    a file that is missing, has another size, has changed bytes, or is not
    listed at all is damage, and so is a manifest that cannot be read or
    does not have the expected form. The normal check is cheap: sizes and
    modification times (``stat`` calls); a file whose time changed is hashed in
    full, and ``full=True`` hashes every file (about 1 s per GB).
Ownership
    hp_mini deletes or replaces only what it made. A cache folder is
    hp_mini's when it holds :data:`MARKER`, or, written before the marker
    existed, a manifest that reads as hp_mini's (a JSON object with
    ``format`` 1 and a ``files`` object). Anything else at a cached model's
    path (a folder of your own, a file, a link) is never deleted or replaced:
    when it is not an intact cached folder, hp_mini stops with a
    :class:`CacheError` that names it and says what to do. A
    folder whose manifest is unreadable counts as hp_mini's only through
    :data:`MARKER`. Temporaries are recognised by the writer file inside them,
    not by their names: :func:`remove_stale_temporaries` removes a hidden
    folder only when it holds that file and its writer is gone (or, on
    another machine, after :data:`STALE_AFTER_S`), and an empty
    ``.hp_mini-*`` folder only after :data:`STALE_AFTER_S`.
Building
    One process builds a folder at a time: :func:`ensure_cached` holds the
    lock file ``.<name>.lock`` beside it, which records the holder's process
    id, machine and start time and which the holder touches every few
    seconds. Another process waits, saying which process it waits for; when
    the holder shows no sign of life for :data:`LOCK_TIMEOUT_S` (it is stopped,
    or hung), the waiter stops with a :class:`CacheError` that names the
    process and how to clear the lock. A lock whose holder died on this
    machine is taken over.
Loading
    :func:`load_cached` checks a folder cheaply, loads it, and when loading
    fails checks every byte: a damaged folder is rebuilt with a
    ``RuntimeWarning`` (or reported, with the command that removes it, when
    what it is built from is gone); an intact one that cannot be loaded is
    reported, not rebuilt. Loading reads only: placing a model on a device
    comes after, so that a device problem is never taken for damage.

A complete, intact cache loads from a read-only folder; building or repairing
needs a writable one (a :class:`CacheError` says so).

Example
-------
>>> from hp_mini.model.cache import cache_dir, ensure_cached
>>> folder = ensure_cached(cache_dir() / "example",
...                        lambda tmp: (tmp / "a.txt").write_text("hi"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = [
    "LOCK_TIMEOUT_S",
    "MANIFEST",
    "MARKER",
    "STALE_AFTER_S",
    "CacheError",
    "DamagedCacheError",
    "cache_dir",
    "ensure_cached",
    "file_sha256",
    "find_damage",
    "load_cached",
    "remove_stale_temporaries",
    "write_atomically",
]

MANIFEST = "hp_mini-manifest.json"
"""File name of the manifest that :func:`write_atomically` writes last in each cached folder."""

MARKER = ".hp_mini-cache"
"""File name of the marker that says a folder was made by hp_mini (which may then replace it)."""

STALE_AFTER_S = 3600.0
"""A temporary whose writer cannot be asked (another machine) is removed once it is this old (seconds)."""

LOCK_TIMEOUT_S = 120.0
"""How long a process waits for a lock holder that shows no sign of life (seconds).

A holder touches its lock file every few seconds while it builds, so a long
build is waited for; a stopped or hung one is reported after this time. The
environment variable ``HP_MINI_LOCK_TIMEOUT`` overrides it.
"""


class CacheError(OSError):
    """A cache folder cannot be used: not made by hp_mini, not writable, locked by a silent process, or damaged."""


class DamagedCacheError(CacheError):
    """A cached folder is damaged and what it was built from is not available."""


_WRITER = ".hp_mini-writer.json"  # inside a temporary: who writes it (the temporary's marker)
_PREFIX = ".hp_mini-"  # temporaries: .hp_mini-tmp-<name>-XXXXXXXX, .hp_mini-old-<name>-XXXXXXXX
_BOOKKEEPING = (MANIFEST, MARKER, _WRITER)
_MARKER_TEXT = "This folder was made by hp_mini; hp_mini checks it against hp_mini-manifest.json and may rebuild it.\n"
_CHUNK = 1 << 24
_HEARTBEAT_S = 5.0
_POLL_S = 0.5
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)

T = TypeVar("T")


def cache_dir() -> Path:
    """Where hp_mini caches converted and trained models.

    Returns
    -------
    pathlib.Path
        ``$HP_MINI_CACHE`` when set, else ``~/.cache/hp_mini``.
    """
    root = os.environ.get("HP_MINI_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "hp_mini"


# --------------------------------------------------------------------------- #
# Manifests and checks
# --------------------------------------------------------------------------- #


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, in hex, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _is_bookkeeping(rel: str) -> bool:
    # hp_mini's own files at the top of a folder, and a manifest rewrite cut short
    return rel in _BOOKKEEPING or rel.startswith(f".{MANIFEST}.")


def _files_in(folder: Path) -> list[str]:
    """Every file under ``folder`` (links to files included), as POSIX paths relative to it."""
    found = []
    for top, dirs, files in os.walk(folder):
        base = Path(top)
        names = files + [d for d in dirs if (base / d).is_symlink()]  # a link to a folder is not walked into
        for name in names:
            rel = (base / name).relative_to(folder).as_posix()
            if not _is_bookkeeping(rel):
                found.append(rel)
    return sorted(found)


def _manifest_of(folder: Path) -> dict:
    files = {}
    for rel in _files_in(folder):
        path = folder / rel
        st = path.stat()
        files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}
    return {"format": 1, "files": files}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _manifest_problem(manifest: object) -> str | None:
    """What is wrong with the form of a parsed manifest, or ``None``."""
    if not isinstance(manifest, dict):
        return f"it is a JSON {type(manifest).__name__}, not an object"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "it has no 'files' object" if files is None else f"its 'files' is a {type(files).__name__}, not an object"
    for rel, entry in files.items():
        parts = rel.split("/")
        if not rel or rel.startswith("/") or ".." in parts or "\\" in rel:
            return f"it lists {rel!r}, which is not a path inside the folder"
        if not isinstance(entry, dict):
            return f"its entry for {rel} is a {type(entry).__name__}, not an object"
        for key, kind in (("size", int), ("mtime_ns", int), ("sha256", str)):
            if key not in entry:
                return f"its entry for {rel} has no {key!r}"
            if not isinstance(entry[key], kind) or isinstance(entry[key], bool):
                return f"its entry for {rel} has {key}={entry[key]!r}, not a {kind.__name__}"
    return None


def find_damage(folder: str | os.PathLike, *, full: bool = False) -> str | None:
    """Check a cached folder against the manifest written with it.

    Every file in the folder is checked: one that is missing, has another
    size, has other bytes, or is not listed in the manifest is damage, and so
    is a manifest that cannot be read or has not the expected form.

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
        text = (folder / MANIFEST).read_text()
    except FileNotFoundError:
        return f"it has no {MANIFEST} (cut short, written by an older hp_mini, or not made by hp_mini)"
    except (OSError, UnicodeDecodeError) as err:
        return f"its {MANIFEST} is unreadable ({err.__class__.__name__}: {err})"
    try:
        manifest = json.loads(text)
    except ValueError as err:
        return f"its {MANIFEST} is unreadable (not JSON: {err})"
    problem = _manifest_problem(manifest)
    if problem is not None:
        return f"its {MANIFEST} is malformed: {problem}"
    files = manifest["files"]
    for rel in _files_in(folder):
        if rel not in files:
            return f"{rel} is not listed in its {MANIFEST} (added or replaced after the folder was written)"
    restamp = False
    for rel, want in files.items():
        path = folder / rel
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"{rel} is missing"
        except OSError as err:
            return f"{rel} cannot be read ({err.__class__.__name__}: {err})"
        if st.st_size != want["size"]:
            return f"{rel} has {st.st_size} bytes instead of {want['size']}"
        if full or st.st_mtime_ns != want["mtime_ns"]:
            try:
                digest = file_sha256(path)
            except OSError as err:
                return f"{rel} cannot be read ({err.__class__.__name__}: {err})"
            if digest != want["sha256"]:
                return f"{rel} has changed since it was written (its SHA-256 differs)"
            if st.st_mtime_ns != want["mtime_ns"]:  # copied, or touched: same bytes
                want["mtime_ns"], restamp = st.st_mtime_ns, True
    if restamp:  # remember the new times so that the next check is cheap again
        with contextlib.suppress(OSError):
            _write_json(folder / MANIFEST, manifest)
    return None


def _made_by_hp_mini(folder: Path) -> bool:
    """Whether hp_mini made ``folder`` (so may replace it): see the module's rules."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / MARKER).is_file():
        return True
    try:  # written before MARKER existed: a manifest that reads as hp_mini's
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == 1 and isinstance(manifest.get("files"), dict)


def _not_ours(final: Path, what: str) -> CacheError:
    kind = "a link" if final.is_symlink() else "a folder" if final.is_dir() else "a file"
    return CacheError(
        f"{final} is {kind} that hp_mini did not make (it has no {MARKER} and no readable {MANIFEST}), "
        f"so hp_mini will not replace it with the cached {what}. hp_mini never deletes what it did not make: "
        f"move it away (e.g. mv '{final}' '{final}.mine'), or set HP_MINI_CACHE to another folder."
    )


# --------------------------------------------------------------------------- #
# The cache folder itself
# --------------------------------------------------------------------------- #


def _root_error(root: Path, err: OSError | None, what: str) -> CacheError:
    setting = os.environ.get("HP_MINI_CACHE")
    where = f" (HP_MINI_CACHE={setting!r})" if setting and root == cache_dir() else ""
    if err is None or isinstance(err, (FileExistsError, NotADirectoryError)):
        return CacheError(
            f"the cache folder {root}{where} is a file, or lies under one, not a folder: "
            f"set HP_MINI_CACHE to a folder (it is created if missing)"
        )
    return CacheError(
        f"the cache folder {root}{where} is not writable ({err.strerror or err}), so the {what} cannot be "
        f"built or repaired there: set HP_MINI_CACHE to a writable folder"
    )


def _make_root(root: Path, what: str) -> None:
    if root.exists() and not root.is_dir():
        raise _root_error(root, None, what)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise _root_error(root, err, what) from err
    except OSError as err:
        if err.errno in _NOT_WRITABLE:
            raise _root_error(root, err, what) from err
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def _make_temporary(root: Path, kind: str, name: str) -> Path:
    """A new hidden folder ``.hp_mini-<kind>-<name>-XXXXXXXX`` holding the writer file."""
    for _ in range(100):
        tmp = root / f"{_PREFIX}{kind}-{name}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()  # the umask's permissions, so that a shared cache stays readable
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"could not make a temporary folder in {root}")
    try:
        (tmp / _WRITER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                               "started": time.time()}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _in_use(tmp: Path, now: float) -> bool:
    try:
        writer = json.loads((tmp / _WRITER).read_text())
        if writer.get("host") == socket.gethostname():
            return _pid_alive(int(writer["pid"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    # No writer we can ask (another machine): wait until it has not changed for a while.
    try:
        return now - tmp.stat().st_mtime < STALE_AFTER_S
    except FileNotFoundError:
        return True


def remove_stale_temporaries(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove temporary folders that killed writes left in the cache.

    A temporary is a hidden folder holding hp_mini's writer file. It is removed
    when its writer process (same machine) is gone, or, when there is no
    writer to ask, when it is older than :data:`STALE_AFTER_S`. An empty
    ``.hp_mini-tmp-*`` or ``.hp_mini-old-*`` folder (its writer was stopped
    before it wrote the writer file) is removed after :data:`STALE_AFTER_S`.
    Nothing else is touched, whatever its name.

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
        entries = [e for e in os.scandir(root) if e.name.startswith(".")]
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        path = Path(entry.path)
        if (path / _WRITER).is_file():
            if not _in_use(path, now):
                shutil.rmtree(path, ignore_errors=True)
                if not os.path.lexists(path):
                    removed.append(path)
        elif entry.name.startswith(_PREFIX):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime >= STALE_AFTER_S:
                    path.rmdir()  # only when empty
                    removed.append(path)
    return removed


def _remove(folder: Path) -> None:
    """Rename hp_mini's ``folder`` aside (one atomic step), then delete it."""
    aside = _make_temporary(folder.parent, "old", folder.name)
    os.replace(folder, aside / "damaged")
    shutil.rmtree(aside, ignore_errors=True)


def write_atomically(final: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Create the folder ``final`` by filling a temporary sibling and renaming it.

    ``fill(tmp)`` writes everything into ``tmp``; then :data:`MARKER` and the
    manifest that :func:`find_damage` reads are written, and ``tmp`` is renamed
    to ``final``. If ``fill`` raises, nothing is left behind. If ``final`` exists
    and is intact (another process finished first), it is kept; if it is
    damaged and hp_mini made it, it is replaced.

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

    Raises
    ------
    CacheError
        When something hp_mini did not make is at ``final``, or the cache folder
        is a file or not writable.
    """
    final = Path(final)
    what = final.name
    _make_root(final.parent, what)
    if os.path.lexists(final) and not _made_by_hp_mini(final):
        raise _not_ours(final, what)
    remove_stale_temporaries(final.parent)
    try:
        tmp = _make_temporary(final.parent, "tmp", final.name)
    except OSError as err:
        if err.errno in _NOT_WRITABLE:
            raise _root_error(final.parent, err, what) from err
        raise
    try:
        fill(tmp)
        (tmp / MARKER).write_text(_MARKER_TEXT)
        _write_json(tmp / MANIFEST, _manifest_of(tmp))
        for attempt in range(3):
            if os.path.lexists(final):
                if find_damage(final, full=True) is None:  # another process finished first: keep its folder
                    return final
                if not _made_by_hp_mini(final):
                    raise _not_ours(final, what)
                _remove(final)
            try:
                os.replace(tmp, final)
                break
            except OSError:  # another process put a folder there meanwhile
                if attempt == 2 or not os.path.lexists(final):
                    raise
        with contextlib.suppress(OSError):
            (final / _WRITER).unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- #
# The lock
# --------------------------------------------------------------------------- #


def _lock_timeout() -> float:
    with contextlib.suppress(KeyError, ValueError):
        return float(os.environ["HP_MINI_LOCK_TIMEOUT"])
    return LOCK_TIMEOUT_S


def _holder_of(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if "pid" not in holder:
        return "another process (it left no record of itself)"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"process {holder['pid']} on {holder.get('host', '?')} (started {when})"


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(_HEARTBEAT_S):
        with contextlib.suppress(OSError):
            os.utime(path)


def _acquire(path: Path, final: Path, what: str, fcntl) -> int:
    """Lock ``path`` (flock), waiting while its holder shows signs of life; return the locked descriptor."""
    start = time.time()
    told = False
    host = socket.gethostname()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of(fd)
            now, touched = time.time(), start
            with contextlib.suppress(OSError):
                touched = os.fstat(fd).st_mtime  # the holder's last sign of life
            os.close(fd)
            silent = now - max(touched, start)
            pid = holder.get("pid")
            if (holder.get("host") == host and isinstance(pid, int) and not _pid_alive(pid)
                    and now - touched > 2 * _HEARTBEAT_S):
                # Its holder died (a process it started keeps the old file locked): take it over.
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            if not told:
                print(f"hp_mini: waiting for {_describe(holder)}, which is building the {what} in {final} "
                      f"(lock file {path})", file=sys.stderr, flush=True)
                told = True
            if silent > _lock_timeout():
                if isinstance(pid, int):
                    how = (f"it may be stopped (Ctrl-Z; resume it with `fg` or `kill -CONT {pid}`) or hung. "
                           f"End it (`kill {pid}` on {holder.get('host', '?')}) and try again")
                else:
                    how = "end the hp_mini process that is building it and try again"
                raise CacheError(
                    f"{_describe(holder)} holds the lock on the {what} ({path}) and has shown no sign of life for "
                    f"{silent:.0f} s: {how}; if that process is gone, delete the lock file: rm '{path}'"
                )
            time.sleep(_POLL_S)
            continue
        except BaseException:
            os.close(fd)
            raise
        try:  # the file may have been taken over (replaced) between open and flock
            same = os.fstat(fd).st_ino == path.stat().st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def _lock(final: Path, what: str):
    """Hold the lock on ``final`` (POSIX), so that one process builds it; see the module's rules."""
    try:
        import fcntl
    except ImportError:  # no advisory locks: concurrent builds still end with one good folder
        yield
        return
    path = final.parent / f".{final.name}.lock"
    try:
        fd = _acquire(path, final, what, fcntl)
    except OSError as err:
        if err.errno in _NOT_WRITABLE:
            raise _root_error(final.parent, err, what) from err
        raise
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True, name="hp_mini-lock")
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "what": what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        beat.start()
        yield
    finally:
        stop.set()
        if beat.is_alive():
            beat.join()
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------- #
# Building and loading
# --------------------------------------------------------------------------- #


def _intact(final: Path, full: bool) -> bool:
    if find_damage(final, full=full) is not None:
        return False
    if not (final / MARKER).exists():  # written before MARKER existed: mark it as hp_mini's
        with contextlib.suppress(OSError):
            (final / MARKER).write_text(_MARKER_TEXT)
    return True


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
        ``final``, intact: found so, built, or rebuilt.

    Raises
    ------
    DamagedCacheError
        When the folder is damaged and ``source`` says it cannot be rebuilt;
        the message names the folder and the command that removes it.
    CacheError
        When something hp_mini did not make is at ``final``; when the cache
        folder is a file or, for a build, not writable; when the process that
        holds the lock shows no sign of life for :data:`LOCK_TIMEOUT_S`.
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
    if final.exists() and _intact(final, full):  # the normal path: a few stat calls
        return final
    if os.path.lexists(final) and not _made_by_hp_mini(final):
        raise _not_ours(final, what)
    _make_root(final.parent, what)
    with _lock(final, what):
        present = os.path.lexists(final)
        problem = find_damage(final, full=full) if present else None
        if present and problem is None:  # another process built it meanwhile
            return final
        if present and not _made_by_hp_mini(final):
            raise _not_ours(final, what)
        _check_source(source, final, what, problem)
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


def _check_source(source: Callable[[], object] | None, final: Path, what: str, problem: str | None) -> None:
    """Raise what ``source()`` raises; for a damaged folder, a :class:`DamagedCacheError` that says how to clear it."""
    if source is None:
        return
    try:
        source()
    except OSError as err:
        if problem is None:
            raise
        raise DamagedCacheError(
            f"the cached {what} at {final} is damaged ({problem}) and cannot be rebuilt: {err}\n"
            f"Remove it with: rm -rf '{final}'"
        ) from err


def _out_of_memory(err: BaseException) -> bool:
    # Not the cache's fault: a device or the machine ran out of memory.
    if isinstance(err, MemoryError):
        return True
    import torch

    return isinstance(err, getattr(torch, "OutOfMemoryError", MemoryError))


def load_cached(
    final: str | os.PathLike,
    fill: Callable[[Path], None],
    load: Callable[[Path], T],
    *,
    source: Callable[[], object] | None = None,
    full: bool = False,
    what: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> T:
    """Load a cached folder with ``load``, building it first when needed and rebuilding it when damaged.

    The folder is checked cheaply (:func:`ensure_cached`), then ``load(folder)``
    reads it. When ``load`` raises, every byte is checked: a damaged folder is
    rebuilt (with a ``RuntimeWarning``) and loaded again; an intact one is
    reported. ``load`` should only read: placing the result on a device is
    the caller's business, so that a device problem is never taken for damage.

    Parameters
    ----------
    final, fill, source, full, what, announce
        As for :func:`ensure_cached` (``full`` applies to the first check).
    load : callable
        ``load(folder) -> object``; raises when the folder's content is not
        what it should be.

    Returns
    -------
    object
        What ``load`` returns.

    Raises
    ------
    DamagedCacheError
        When the folder is damaged and ``source`` says it cannot be rebuilt.
    CacheError
        When the folder is intact yet ``load`` fails, or fails again after a
        rebuild; and as for :func:`ensure_cached`.
    """
    final = Path(final)
    what = what or final.name
    spec = dict(source=source, what=what, announce=announce)
    folder = ensure_cached(final, fill, full=full, **spec)
    try:
        return load(folder)
    except Exception as err:  # noqa: BLE001 - any failure to read is checked against the manifest
        if _out_of_memory(err):
            raise
        failure = err
    problem = find_damage(folder, full=True)
    if problem is None:
        raise CacheError(
            f"the cached {what} at {folder} is exactly as hp_mini wrote it (every file matches its manifest), "
            f"yet loading it failed ({failure.__class__.__name__}: {failure}). Rebuilding it would most likely "
            f"write the same; if hp_mini or its libraries changed since it was written, remove it and it will be "
            f"rebuilt: rm -rf '{folder}'"
        ) from failure
    folder = ensure_cached(final, fill, full=True, **spec)  # rebuilds, with a warning that says what was wrong
    try:
        return load(folder)
    except Exception as err:  # noqa: BLE001
        if _out_of_memory(err):
            raise
        raise CacheError(
            f"the cached {what} at {folder} was damaged ({problem}) and has been rebuilt, yet loading it failed "
            f"({err.__class__.__name__}: {err})"
        ) from err
