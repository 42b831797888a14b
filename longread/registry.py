"""Registry of stage classes by key.

Each stage class declares its own ``key`` and is added with ``@register``. Built-in stages
live in the modules listed in ``_BUILTIN_MODULES`` (imported on first lookup; those modules
import heavy libraries only inside ``setup``). Third-party stages come only through the
``longread.stages`` entry-point group, never through import paths in a config.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TypeVar

from .stage import Stage

__all__ = ["register", "get", "keys", "UnknownStageError"]

_BUILTIN_MODULES = (
    "longread.retrievers.bm25",
    "longread.retrievers.dense",
    "longread.retrievers.hybrid",
    "longread.retrievers.rerankers",
    "longread.retrievers.reorder",
    "longread.compressors.extractive",
    "longread.compressors.color",
    "longread.readers.hf",
    "longread.readers.retrolm",
    "longread.readers.refrag",
    "longread.readers.route",
    "longread.fakes",
)

_REGISTRY: dict[str, type[Stage]] = {}
_loaded = False

S = TypeVar("S", bound=type[Stage])


class UnknownStageError(KeyError):
    """Raised for a key no registered stage has; the message lists the valid keys."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register(cls: S) -> S:
    """Class decorator: add ``cls`` under ``cls.key``. Raises ``ValueError`` on a missing or taken key."""
    key = getattr(cls, "key", "")
    if not key or "." not in key:
        raise ValueError(f"{cls.__name__}.key must look like 'kind.name', got {key!r}")
    other = _REGISTRY.get(key)
    if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"stage key {key!r} is taken by {other.__module__}.{other.__qualname__}")
    _REGISTRY[key] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            # A built-in module not written yet is skipped; a missing third-party import is not.
            if e.name != mod:
                raise
    for ep in entry_points(group="longread.stages"):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not a longread Stage subclass")
        register(cls)


def get(key: str) -> type[Stage]:
    """Return the stage class for ``key``; raise ``UnknownStageError`` listing valid keys."""
    _load()
    try:
        return _REGISTRY[key]
    except KeyError:
        raise UnknownStageError(f"unknown stage key {key!r}; valid keys: {', '.join(sorted(_REGISTRY))}") from None


def keys() -> list[str]:
    """All registered stage keys, sorted."""
    _load()
    return sorted(_REGISTRY)
