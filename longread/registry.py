"""Registry of stage classes by key, imported lazily.

A key maps to ``"module:Class"``; the module is imported the first time the key is looked up
(vLLM's model registry does the same), so a stage module may import torch at the top and
``longread --help`` or loading a config imports nothing heavy. Config validation needs only a
stage's ``Params``: :func:`params` imports just them, from a separate light path where one is
declared (``params="module:Name"``), else from the stage class.

Where stages come from:

- the built-ins, listed in ``_BUILTINS`` below (a new built-in stage must be added there);
- the ``longread.stages`` entry-point group: ``"kind.name" = "pkg.module:Class"`` (the entry
  point's name is the key, so nothing is imported until the key is used; an entry point whose
  name is not a key is loaded the first time a key is not found elsewhere);
- ``@register`` on a class (third-party code, tests) and :func:`declare` for lazy ones.

Configs never name import paths, only keys.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from .stage import Stage

__all__ = ["register", "declare", "get", "params", "keys", "UnknownStageError"]

# key -> "module:Class". Importing the module runs its ``@register``; the class is then checked.
_BUILTINS: dict[str, str] = {
    "retriever.bm25": "longread.retrievers.bm25:BM25Retriever",
    "retriever.dense": "longread.retrievers.dense:DenseRetriever",
    "retriever.hybrid": "longread.retrievers.hybrid:HybridRetriever",
    "reranker.pointwise": "longread.retrievers.rerankers:PointwiseReranker",
    "reranker.first": "longread.retrievers.rerankers:FirstReranker",
    "reranker.fullrank": "longread.retrievers.rerankers:FullRankReranker",
    "reranker.sliding": "longread.retrievers.rerankers:SlidingWindowReranker",
    "reorder.hard_negative": "longread.retrievers.reorder:HardNegativeReorder",
    "compressor.extractive": "longread.compressors.extractive:ExtractiveCompressor",
    "compressor.color": "longread.compressors.color:ColorCompressor",
    "compressor.window": "longread.compressors.window:SentenceWindow",
    "reader.hf": "longread.readers.hf:HFReader",
    "reader.long_context": "longread.readers.hf:LongContextReader",
    "reader.retrolm": "longread.readers.retrolm.reader:RetroLMReader",
    "reader.refrag": "longread.readers.refrag:RefragReader",
    "reader.route": "longread.readers.route:RouteReader",
    "reader.echo": "longread.fakes:EchoReader",
}

# key -> "module:Name" of the stage's Params, for a stage whose module is heavy to import
# (torch at the top): config validation then imports only this light module. Stages not
# listed here are validated with ``Class.Params`` (their module must then be light).
_BUILTIN_PARAMS: dict[str, str] = {}

_REGISTRY: dict[str, type["Stage"]] = {}
_LAZY: dict[str, str] = dict(_BUILTINS)
_LAZY_PARAMS: dict[str, str] = dict(_BUILTIN_PARAMS)
_entry_points: dict[str, EntryPoint] | None = None
_unnamed_loaded = False

S = TypeVar("S", bound=type)


class UnknownStageError(KeyError):
    """Raised for a key no registered stage has; the message lists the valid keys."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def _check_key(key: str, what: str) -> None:
    if not isinstance(key, str) or "." not in key or key.startswith(".") or key.endswith("."):
        raise ValueError(f"{what} must look like 'kind.name', got {key!r}")


def register(cls: S) -> S:
    """Class decorator: add ``cls`` under ``cls.key``. Raises ``ValueError`` on a missing or taken key."""
    key = getattr(cls, "key", "")
    _check_key(key, f"{cls.__name__}.key")
    other = _REGISTRY.get(key)
    # Re-running a module (tests re-import, Ray workers) registers an equal class again: allowed.
    if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"stage key {key!r} is taken by {other.__module__}.{other.__qualname__}")
    lazy = _LAZY.get(key)
    if lazy is not None and other is None and lazy != f"{cls.__module__}:{cls.__qualname__}":
        raise ValueError(f"stage key {key!r} is taken by {lazy}")
    _REGISTRY[key] = cls
    return cls


def declare(key: str, target: str, *, params: str | None = None) -> None:
    """Register ``key`` lazily: ``target`` is ``"module:Class"``, imported on first :func:`get`.

    ``params`` (``"module:Name"``) is where the stage's Params live when its module is heavy;
    :func:`params` then imports only that. Raises ``ValueError`` for a malformed key or path,
    or a key already taken by another target.
    """
    _check_key(key, "stage key")
    for path in (target, params):
        if path is not None and (path.count(":") != 1 or not all(path.split(":"))):
            raise ValueError(f"stage {key!r}: import path must look like 'module:Name', got {path!r}")
    taken = _LAZY.get(key) or (f"{_REGISTRY[key].__module__}:{_REGISTRY[key].__qualname__}" if key in _REGISTRY else None)
    if taken is not None and taken != target:
        raise ValueError(f"stage key {key!r} is taken by {taken}")
    _LAZY[key] = target
    if params is not None:
        _LAZY_PARAMS[key] = params


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _eps() -> dict[str, EntryPoint]:
    global _entry_points
    if _entry_points is None:
        _entry_points = {ep.name: ep for ep in entry_points(group="longread.stages")}
    return _entry_points


def _load_unnamed() -> None:
    # Entry points named otherwise than by a key (an older habit): their key is known only
    # once the class is loaded, so load them all, once.
    global _unnamed_loaded
    if _unnamed_loaded:
        return
    _unnamed_loaded = True
    for name, ep in _eps().items():
        if "." not in name:
            _register_entry_point(ep, None)


def _register_entry_point(ep: EntryPoint, key: str | None) -> type["Stage"]:
    from .stage import Stage

    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not a longread Stage subclass")
    if key is not None and cls.key != key:
        raise ValueError(f"entry point {ep.name!r} ({ep.value}) loads a stage whose key is {cls.key!r}")
    return register(cls)


def get(key: str) -> type["Stage"]:
    """Return the stage class for ``key``, importing its module on first use.

    Raises ``UnknownStageError`` listing the valid keys; an import error of a stage module
    propagates (a broken stage is not an unknown one).
    """
    from .stage import Stage

    cls = _REGISTRY.get(key)
    if cls is not None:
        return cls
    target = _LAZY.get(key)
    if target is not None:
        cls = _import(target)
        if not (isinstance(cls, type) and issubclass(cls, Stage)) or cls.key != key:
            raise TypeError(f"stage {key!r}: {target} is not a longread Stage with key {key!r}")
        return register(cls)
    ep = _eps().get(key)
    if ep is not None:
        return _register_entry_point(ep, key)
    _load_unnamed()
    if key in _REGISTRY:
        return _REGISTRY[key]
    raise UnknownStageError(f"unknown stage key {key!r}; valid keys: {', '.join(keys())}")


def params(key: str) -> type:
    """The ``Params`` model of stage ``key``, importing as little as possible (see the module docstring).

    Raises ``UnknownStageError`` like :func:`get`.
    """
    path = _LAZY_PARAMS.get(key)
    if path is not None and key not in _REGISTRY:
        return _import(path)
    return get(key).Params


def keys() -> list[str]:
    """All known stage keys, sorted; imports no stage module named by key."""
    _load_unnamed()
    return sorted(set(_REGISTRY) | set(_LAZY) | {n for n in _eps() if "." in n})
