"""The on-disk KV cache: what readers keep across runs (page KV, chunk embeddings), bounded, LRU.

Stages get its directory as ``RunContext.cache_dir``; by default it is ``$LONGREAD_KV_DIR``, else
``<cache root>/kv`` where
the cache root is the model cache (``--cache-dir``, else ``$LONGREAD_CACHE``, else
``~/.cache/longread``), so a second run on the same documents reuses the first run's prefill
(``reader.retrolm`` under ``kv/retrolm/``, ``reader.refrag`` under ``kv/refrag/``).

Size is bounded by ``--kv-max`` / ``$LONGREAD_KV_MAX`` (default ``20GB``; ``0`` keeps the KV in
memory only). When a run starts and when it ends, the least recently used entries are removed
until the cache fits. An entry is a directory holding a ``meta.safetensors`` (one document's page
KV: its pages are useless apart) or any other single file; its last use is its modification
time, which readers refresh on every hit (``Path.touch``). Access times are not used: listing or
sizing the cache would count as a use, and ``relatime`` mounts update them at most daily. Entries used
in the last :data:`GRACE_SECONDS` are never removed, so a run in progress keeps what it reads.
``longread cache list`` shows the cache; ``longread cache clear`` empties it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import LockedError, short_repr

__all__ = [
    "DEFAULT_KV_MAX",
    "GRACE_SECONDS",
    "KVEntry",
    "kv_root",
    "parse_size",
    "kv_max_bytes",
    "entries",
    "usage",
    "evict",
    "clear",
    "format_size",
    "format_listing",
]

DEFAULT_KV_MAX = "20GB"
GRACE_SECONDS = 600.0
"""Entries used this recently are kept even over the bound (a live run may still read them)."""
STALE_TEMP_SECONDS = 3600.0
"""A temp file/dir left by a writer this long ago belongs to a dead process and is removed."""
_UNIT_MARKER = "meta.safetensors"
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "T": 1 << 40, "TB": 1 << 40}


def kv_root(cache_dir: str | Path | None = None) -> Path:
    """``$LONGREAD_KV_DIR`` if set, else ``<cache root>/kv`` where the cache root is ``cache_dir``,
    else ``$LONGREAD_CACHE``, else ``~/.cache/longread``."""
    from .models.packs import default_cache_dir

    env = os.environ.get("LONGREAD_KV_DIR")
    if env:
        return Path(env).expanduser()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "kv"


def parse_size(text: str | int) -> int:
    """Bytes in ``"20GB"``, ``"512M"``, ``"0"`` or an int (binary units); raise ``ValueError`` otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"a size must be like 20GB or 512MB, got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size must be >= 0, got {text}")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else ""
    if unit.endswith("IB"):  # GiB and GB both mean 2**30 here
        unit = unit[:-2] + "B"
    if m is None or unit not in _UNITS:
        raise ValueError(f"a size must be like 20GB, 512MB or 0, got {short_repr(text)}")
    return int(float(m.group(1)) * _UNITS[unit])


def kv_max_bytes(value: str | int | None = None) -> int:
    """The KV cache bound: ``value``, else ``$LONGREAD_KV_MAX``, else :data:`DEFAULT_KV_MAX`."""
    if value is None:
        value = os.environ.get("LONGREAD_KV_MAX") or DEFAULT_KV_MAX
    try:
        return parse_size(value)
    except ValueError as e:
        raise ValueError(f"KV cache size (--kv-max / LONGREAD_KV_MAX): {e}") from None


@dataclass(frozen=True)
class KVEntry:
    """One evictable thing in the cache: a page-KV directory or a file."""

    path: Path
    size: int
    last_used: float


def _tree_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


def _is_temp(name: str) -> bool:
    return name.startswith(".")


def entries(root: str | Path) -> list[KVEntry]:
    """Every entry under ``root``, least recently used first. Hidden names (temps, locks) are skipped."""
    root = Path(root)
    out: list[KVEntry] = []
    if not root.is_dir():
        return out

    def walk(d: Path) -> None:
        try:
            items = list(os.scandir(d))
        except OSError:
            return
        for it in items:
            if _is_temp(it.name):
                continue
            p = Path(it.path)
            try:
                st = it.stat(follow_symlinks=False)
                if it.is_dir(follow_symlinks=False):
                    if (p / _UNIT_MARKER).is_file():
                        out.append(KVEntry(p, _tree_size(p), st.st_mtime))
                    else:
                        walk(p)
                elif it.is_file(follow_symlinks=False):
                    out.append(KVEntry(p, st.st_size, st.st_mtime))
            except OSError:
                continue  # removed meanwhile by another process

    walk(root)
    out.sort(key=lambda e: e.last_used)
    return out


def usage(root: str | Path) -> int:
    """Bytes held by the entries under ``root``."""
    return sum(e.size for e in entries(root))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _stale_temps(root: Path, now: float) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            if name.startswith(".") and name.endswith(".tmp"):
                p = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    if now - p.lstat().st_mtime > STALE_TEMP_SECONDS:
                        yield p
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]


@contextlib.contextmanager
def _evict_lock(root: Path) -> Iterator[bool]:
    from .io import WriterLock

    lock = WriterLock(root / ".evict.lock", f"KV cache {str(root)!r}")
    try:
        lock.acquire()
    except LockedError:
        yield False  # another process is evicting right now; its pass covers ours
        return
    try:
        yield True
    finally:
        lock.release()


def evict(root: str | Path, max_bytes: int, *, now: float | None = None, grace_seconds: float = GRACE_SECONDS) -> list[KVEntry]:
    """Remove least recently used entries until ``root`` holds at most ``max_bytes``.

    Entries used within ``grace_seconds`` are kept (the bound may then stay exceeded until they
    age); temp files older than an hour (writers killed mid-write) are removed. Returns the
    removed entries. Another process evicting at the same moment makes this a no-op.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    removed: list[KVEntry] = []
    with _evict_lock(root) as mine:
        if not mine:
            return removed
        for p in list(_stale_temps(root, now)):
            _remove(p)
        items = entries(root)
        total = sum(e.size for e in items)
        for e in items:
            if total <= max_bytes:
                break
            if now - e.last_used < grace_seconds:
                break  # sorted by last use: everything after is newer still
            _remove(e.path)
            total -= e.size
            removed.append(e)
        _prune_empty_dirs(root)
    return removed


def _prune_empty_dirs(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        p = Path(dirpath)
        if p != root and not dirnames and not filenames:
            with contextlib.suppress(OSError):
                p.rmdir()


def clear(root: str | Path) -> tuple[int, int]:
    """Remove every entry (and stale temp) under ``root``; return (entries removed, bytes freed)."""
    root = Path(root)
    items = entries(root)
    for e in items:
        _remove(e.path)
    for p in list(_stale_temps(root, time.time() + STALE_TEMP_SECONDS + 1)):
        _remove(p)
    _prune_empty_dirs(root)
    return len(items), sum(e.size for e in items)


def format_size(n: float) -> str:
    """``1536`` → ``1.5 KB`` (binary units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover - loop returns at GB


def format_listing(root: str | Path, max_bytes: int) -> str:
    """What ``longread cache list`` prints: entries and bytes per reader/model, total and bound."""
    root = Path(root)
    groups: dict[str, list[KVEntry]] = {}
    for e in entries(root):
        rel = e.path.relative_to(root).parts
        groups.setdefault("/".join(rel[:2]) if len(rel) > 2 else rel[0], []).append(e)
    lines = [f"KV cache {root} (bound {format_size(max_bytes)}; set with --kv-max or LONGREAD_KV_MAX)"]
    if not groups:
        lines.append("  (empty)")
    width = max((len(g) for g in groups), default=0)
    for g, es in sorted(groups.items()):
        last = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(e.last_used for e in es)))
        lines.append(f"  {g.ljust(width)}  {len(es):>7} entries  {format_size(sum(e.size for e in es)):>10}  last used {last}")
    total = sum(e.size for es in groups.values() for e in es)
    lines.append(f"total {format_size(total)} in {sum(len(es) for es in groups.values())} entries")
    return "\n".join(lines)
