"""Errors a backend raises when it cannot work at all (as opposed to one request failing).

Both are also ``ValueError`` s on purpose: the CLI reports ``ValueError`` as a user error (one
``error:`` line, exit 2), and a missing optional package or a server that is not running is
something the user fixes in their set-up or config, not a crash. Code that probes for them can
still catch them as ``ImportError`` / ``ConnectionError``.
"""

from __future__ import annotations

__all__ = ["BackendUnavailableError", "ServerUnreachableError"]


class BackendUnavailableError(ImportError, ValueError):
    """The package a backend runs on is not installed; the message names the extra to install."""


class ServerUnreachableError(ConnectionError, ValueError):
    """The server behind an ``openai`` backend cannot be reached; the message names its URL."""
