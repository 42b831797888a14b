"""Atomic file and directory writes, writer locks and file hashes.

Readers never see a half-written file or directory; files and directories get the permissions a
plain ``open``/``mkdir`` would give (the umask applies), not the owner-only modes of ``mkstemp``
and ``mkdtemp``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import LockedError

__all__ = [
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_dir",
    "make_temp_dir",
    "remove_stale_temps",
    "sha256_file",
    "WriterLock",
    "LockedError",
]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import: os.umask is process-wide and not thread-safe
_FILE_MODE = 0o666 & ~_UMASK
"""The mode a plainly created file gets; ``mkstemp`` alone gives 0o600."""
_DIR_MODE = 0o777 & ~_UMASK
"""The mode a plainly created directory gets; ``mkdtemp`` alone gives 0o700."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path``.

    The file gets the permissions a normal ``open(path, "w")`` would give (umask applied), not the
    owner-only mode of the temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def make_temp_dir(parent: str | Path, prefix: str, suffix: str = ".tmp") -> Path:
    """``tempfile.mkdtemp`` in ``parent``, then given the umask's mode (``mkdtemp`` alone gives 0o700,
    so other users and Ray workers under another uid could not read what is built in it)."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix))
    os.chmod(tmp, _DIR_MODE)
    return tmp


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp directory beside ``path``; on success it replaces ``path``.

    On an exception the temp directory is removed and ``path`` is left as it was. A process
    killed inside leaves ``.<name>.XXXXXXXX.tmp`` behind; :func:`remove_stale_temps` removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(path.parent, prefix=f".{path.name}.")
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _temp_name(name: str) -> re.Pattern[str]:
    # What atomic_dir / atomic_write_bytes / mkdtemp leave for ``name``: ``.name.XXXXXXXX.tmp``,
    # ``.name.old-PID``. The random part is exactly 8 characters, so ``.name.v2.XXXXXXXX.tmp`` of a
    # sibling called ``name.v2`` never matches.
    return re.compile(rf"^\.{re.escape(name)}\.(?:[a-z0-9_]{{8}}\.tmp|old-\d+)$")


def remove_stale_temps(directory: str | Path, names: list[str] | None = None) -> list[Path]:
    """Remove temp files/dirs that killed writers left in ``directory``; return what was removed.

    ``names``: only the temps of these entries (e.g. one index dir's name in its parent);
    None: every ``.*.tmp`` / ``.*.old-PID`` entry. Call it only while holding the writer lock
    that covers ``directory``: a live writer's temp dir looks the same.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pats = [_temp_name(n) for n in names] if names is not None else [re.compile(r"^\..+\.(?:[a-z0-9_]{8}\.tmp|old-\d+)$")]
    removed = []
    for entry in directory.iterdir():
        if any(p.match(entry.name) for p in pats):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed.append(entry)
    return removed


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    """sha256 hex digest of a file, read in ``chunk``-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while buf := f.read(chunk):
            h.update(buf)
    return h.hexdigest()


class WriterLock:
    """An exclusive ``flock`` on ``path``, held while one process writes a run dir or an index dir.

    ``acquire`` never waits: when another process holds the lock it raises :class:`LockedError`
    naming that process's pid (written into the lock file by each holder). The kernel drops the
    lock when the holder exits, even by ``kill -9``, so no stale lock survives; the file itself
    stays (deleting it would let two processes lock two different files of the same name).
    ``what`` names the thing locked in the message (e.g. ``"run dir runs/x"``). With
    ``reentrant=True`` a lock this process already holds on the same file is shared instead of
    refused (the CLI takes the run dir's lock before loading anything, then ``run`` takes it again).
    """

    _held: dict[str, list[int]] = {}  # reentrant locks held by this process: real path -> [fd, count]

    def __init__(self, path: str | Path, what: str, *, reentrant: bool = False) -> None:
        self.path = Path(path)
        self.what = what
        self.reentrant = reentrant
        self._fd: int | None = None

    def acquire(self) -> "WriterLock":
        """Take the lock; raise ``LockedError`` when another process has it."""
        import fcntl

        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if self.reentrant and key in WriterLock._held:
            entry = WriterLock._held[key]
            entry[1] += 1
            self._fd = entry[0]
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise LockedError(
                f"{self.what} is being written by another longread process ({who}, lock {self.path}); "
                "wait for it to finish or stop it, or choose another directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        if self.reentrant:
            WriterLock._held[key] = [fd, 1]
        return self

    def release(self) -> None:
        """Drop the lock (closing the file releases the flock; a shared reentrant one at its last release)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self.reentrant:
            key = os.path.realpath(self.path)
            entry = WriterLock._held.get(key)
            if entry is not None and entry[0] == fd:
                entry[1] -= 1
                if entry[1] > 0:
                    return
                del WriterLock._held[key]
        os.close(fd)

    @property
    def outermost(self) -> bool:
        """True when releasing this object drops the lock (no other holder in this process shares it)."""
        if self._fd is None:
            return False
        entry = WriterLock._held.get(os.path.realpath(self.path)) if self.reentrant else None
        return entry is None or entry[1] == 1

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> str | None:
    try:
        text = os.pread(fd, 200, 0).decode("ascii", "replace").split()
    except OSError:
        return None
    return text[0] if text and text[0].isdigit() else None
