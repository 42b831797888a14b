"""Errors a user can fix, and how they are turned into one ``error:`` line.

Any exception in :data:`USER_ERRORS` reaching the command line prints ``error: <one line>`` and
exits 2 (``--debug`` re-raises it with its traceback). Messages that quote user input go through
:func:`short_repr` so a huge or self-expanding value never makes an error message huge.
"""

from __future__ import annotations

import errno
from typing import Any

__all__ = [
    "UserError",
    "LockedError",
    "IndexCorruptError",
    "short_repr",
    "clip",
    "one_line",
    "user_message",
    "MAX_REPR",
]

MAX_REPR = 200
"""Characters of a quoted user value kept in an error message."""

MAX_MESSAGE = 2000
"""Characters of a whole ``error:`` line kept by :func:`user_message`."""


class UserError(Exception):
    """A failure the user caused and can fix (busy dir, damaged index, ...); the message says how."""


class LockedError(UserError):
    """Another process holds the writer lock of a run dir or an index dir."""


class IndexCorruptError(UserError, ValueError):
    """An index dir whose files do not match its manifest (truncated, emptied, altered)."""


def clip(text: str, limit: int = MAX_REPR) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def short_repr(value: Any, limit: int = MAX_REPR) -> str:
    """``repr(value)`` cut to about ``limit`` characters.

    Containers are rendered only as far as needed, so a value built from nested YAML aliases
    (billions of elements when expanded) costs no more than ``limit`` to describe.
    """
    return clip(_bounded_repr(value, limit + 1), limit)


def _bounded_repr(value: Any, budget: int) -> str:
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        opener, closer = {list: "[]", tuple: "()", dict: "{}"}.get(type(value), "{}")
        parts: list[str] = []
        used = 1
        items = value.items() if isinstance(value, dict) else value
        for item in items:
            if used >= budget:
                parts.append("...")
                break
            if isinstance(value, dict):
                k, v = item
                s = f"{_bounded_repr(k, budget - used)}: {_bounded_repr(v, budget - used)}"
            else:
                s = _bounded_repr(item, budget - used)
            parts.append(s)
            used += len(s) + 2
        return opener + ", ".join(parts) + closer
    if isinstance(value, str) and len(value) > budget:
        return repr(value[:budget])
    return repr(value)


def one_line(text: str) -> str:
    """Collapse newlines (and the indentation after them) into single spaces."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _os_message(e: OSError) -> str:
    where = f" writing {e.filename}" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full{where} ({e.strerror}); free some space, then rerun (a run continues with --resume)"
    if e.errno == errno.EROFS:
        return f"read-only file system{where}; choose another --out"
    if isinstance(e, FileExistsError):
        return f"{e.filename} already exists and is not a directory" if e.filename else str(e)
    if isinstance(e, NotADirectoryError):
        return f"a path component of {e.filename} is a file, not a directory" if e.filename else str(e)
    if e.strerror and e.filename:
        return f"{e.strerror}: {e.filename}"
    return str(e)


def user_message(exc: BaseException) -> str | None:
    """The one-line message for a user error, or None when ``exc`` is a bug (show a traceback)."""
    from .models.packs import PackError
    from .pipelines.executors import StageFailed

    if isinstance(exc, KeyError) and exc.args:
        msg = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.errno is not None:  # raised by the OS, not by our own checks
        msg = _os_message(exc)
    elif isinstance(exc, (ValueError, OSError, UserError, StageFailed, PackError)):
        msg = str(exc)
    else:
        return None
    return clip(one_line(msg), MAX_MESSAGE)


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, UserError, RuntimeError)
"""Exception types :func:`user_message` is asked about (it still decides per exception)."""
