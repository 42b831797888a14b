"""RetroLM's page store: the on-disk page-KV format, its writer, and reading it back (:class:`PagedDoc`).

One document is one directory ``<key>/``: ``meta.safetensors`` holds the sink KV, every token's
prefill position (``pos``), page token ranges (``bounds``), page character ranges (``spans``)
and the per-page key summaries (``summary.{mean,min,max}``); ``page-NNNNN.safetensors`` holds one
page's keys and values (``k``, ``v``: ``[layers, kv_heads, tokens, head_dim]``). Every file's
metadata carries ``format`` and ``key``. Pages are written as soon as they are prefilled, into a
temp dir renamed to ``<key>/`` once the document is complete (:class:`PageWriter`), so a dir
that exists is whole and a killed writer leaves only a ``.tmp`` dir nobody reads.

:class:`PageStore` finds a document's dir — this batch, the in-memory list, the index part, the
cache dir — or has it built; without a cache dir the dirs go to a private temp dir
(:class:`SpillDir`) removed once nothing refers to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...io import make_temp_dir

__all__ = [
    "FORMAT_VERSION", "META", "page_file", "write_tensors", "doc_key", "PageWriter", "SpillDir", "PagedDoc",
    "open_paged", "PageStore",
]

# 2: one dir per document (meta file + one file per page, written while prefilling); 1: one file.
FORMAT_VERSION = 2
META = "meta.safetensors"
_PAGE_TENSOR = re.compile(r"page\.(\d+)\.([kv])")


def sha(obj: Any) -> str:
    """sha256 hex of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def page_file(i: int) -> str:
    """File name of page ``i`` inside a document dir."""
    return f"page-{i:05d}.safetensors"


def doc_key(
    text: str, *, model_sig: str, dtype: str, page_size: int, sink_tokens: int, local_pages: int, prefix_ids: list[int]
) -> str:
    """The cache key of ``text``'s page KV: everything the stored tensors depend on, and the format."""
    return sha(
        {
            "v": FORMAT_VERSION,
            "doc": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "model": model_sig,
            "page_size": page_size,
            "dtype": dtype,
            "sink_tokens": sink_tokens,
            "local_pages": local_pages,
            "prefix": prefix_ids,
        }
    )[:32]


def write_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Write ``tensors`` as one safetensors file and fsync it (the only place page KV is written)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PageWriter:
    """Writes one document's page KV into a temp dir beside ``final``, renamed into place on ``commit``.

    Used as a context manager: an exception before ``commit`` removes the temp dir, so ``final``
    only ever appears complete. When another writer committed ``final`` first, ours is dropped.
    """

    def __init__(self, final: Path, key: str, meta: dict[str, str]) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        self.final, self.key = final, key
        self.meta = {"format": str(FORMAT_VERSION), "key": key, **meta}
        # The umask's mode, not mkdtemp's 0700: other users and Ray workers read the shared cache.
        self.tmp = make_temp_dir(final.parent, prefix=f".{final.name}.", suffix=".tmp")
        self.n_pages = 0

    def page(self, i: int, k: Any, v: Any) -> None:
        """Write page ``i`` (pages come in order); raises ``ValueError`` out of order."""
        if i != self.n_pages:
            raise ValueError(f"pages must be written in order: expected page {self.n_pages}, got {i}")
        write_tensors(self.tmp / page_file(i), {"k": k, "v": v}, {**self.meta, "page": str(i)})
        self.n_pages += 1

    def commit(self, head: dict[str, Any]) -> None:
        """Write the meta file from ``head`` and move the dir into place."""
        n = int(head["bounds"].shape[0])
        if n != self.n_pages:
            raise ValueError(f"{self.n_pages} pages written but bounds has {n}")
        write_tensors(self.tmp / META, head, {**self.meta, "n_pages": str(n)})
        _fsync(self.tmp)
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            if not (self.final / META).is_file():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)  # an equal copy was committed meanwhile

    def __enter__(self) -> "PageWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


class SpillDir:
    """A private temp dir for page KV when there is no cache dir; removed once nothing holds it."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="longread-retrolm-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)


@dataclass
class PagedDoc:
    """Page KV of one long input, backed by its dir; tensors are read when first asked for.

    ``tensor(name)`` returns: ``sink.k``/``sink.v`` (``[L, kv_heads, S, head_dim]``),
    ``page.{i}.k``/``page.{i}.v`` (read from that page's file only), ``pos`` (prefill position of
    every sink and page token), ``bounds`` (``[P, 2]`` token ranges of pages in the
    sink+document sequence), ``spans`` (``[P, 2]`` character ranges of pages in the input text)
    and ``summary.{mean,min,max}`` (``[L, kv_heads, P, head_dim]`` float32 position-free key
    summaries). Page tensors are read from disk each time they are asked for (``page_reads``
    lists them) and not kept; the rest is O(pages) small and kept until the object is dropped.
    """

    key: str
    get: Callable[[str], Any]
    sink_len: int
    n_pages: int
    source: str  # "prefill", "memory", "disk", "index"
    path: Path | None = None
    _keep: Any = None  # holds a SpillDir alive while this doc is in use
    page_reads: list[str] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)

    def tensor(self, name: str) -> Any:
        """The tensor ``name`` (see the class docstring); ``KeyError`` for an unknown one."""
        if _PAGE_TENSOR.fullmatch(name):
            self.page_reads.append(name)
            return self.get(name)
        if name not in self._cache:
            self._cache[name] = self.get(name)
        return self._cache[name]

    @property
    def lengths(self) -> list[int]:
        """Tokens per page."""
        return [int(b1 - b0) for b0, b1 in self.tensor("bounds").tolist()]


def open_paged(key: str, path: Path, source: str, device: Any, keep: Any = None) -> PagedDoc | None:
    """The page-KV dir ``path`` of ``key`` as a :class:`PagedDoc` (``None`` when there is no such dir).

    Raises ``ValueError`` naming the dir when it is incomplete, of another format or another key.
    """
    if not path.is_dir():
        return None
    from safetensors import safe_open

    if not (path / META).is_file():
        raise ValueError(f"page-KV dir {path} has no {META}; delete it and rerun")
    head = safe_open(str(path / META), framework="pt")
    meta = head.metadata() or {}
    if meta.get("key") != key or meta.get("format") != str(FORMAT_VERSION):
        raise ValueError(f"page-KV dir {path} does not hold key {key} (format {FORMAT_VERSION}); delete it and rerun")
    sink_len = head.get_slice("sink.k").get_shape()[2]
    n_pages = head.get_slice("bounds").get_shape()[0]
    missing = [i for i in range(n_pages) if not (path / page_file(i)).is_file()]
    if str(n_pages) != meta.get("n_pages") or missing:
        raise ValueError(
            f"page-KV dir {path} is incomplete ({len(missing)} of {n_pages} page files missing); delete it and rerun"
        )

    def get(name: str) -> Any:
        m = _PAGE_TENSOR.fullmatch(name)
        if m is None:
            return head.get_tensor(name).to(device)
        i = int(m.group(1))
        if i >= n_pages:
            raise KeyError(f"page {i} out of range: {path} has {n_pages} pages")
        with safe_open(str(path / page_file(i)), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                raise ValueError(f"{path / page_file(i)} does not hold key {key}; delete {path} and rerun")
            return f.get_tensor(m.group(2)).to(device)

    return PagedDoc(key, get, sink_len, n_pages, source, path, keep)


class PageStore:
    """Where page-KV dirs are found or built.

    ``cache_root``: the run's cache dir for this model (``None``: private temp dirs); ``index_root``:
    a precomputed index part; ``memory_docs``: temp-dir documents kept for reuse (with ``keep``);
    ``stats`` counts ``memory_hits``, ``index_hits`` and ``disk_hits``.
    """

    def __init__(
        self, *, device: Any, cache_root: Path | None = None, index_root: Path | None = None, keep: bool = True,
        memory_docs: int = 2, stats: dict[str, int] | None = None,
    ) -> None:
        self.device, self.cache_root, self.index_root = device, cache_root, index_root
        self.keep, self.memory_docs = keep, memory_docs
        self.stats = stats if stats is not None else {}
        self._memory: OrderedDict[str, tuple[Path, SpillDir | None]] = OrderedDict()

    def _hit(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def get(
        self, key: str, build: Callable[[Path], int], batch: dict[str, tuple[Path, Any]] | None = None
    ) -> tuple[PagedDoc, int]:
        """The page KV of ``key``: from ``batch`` (this call's documents) or the memory list, the index
        part, the cache dir, or ``build(dir)`` (returns the tokens it prefilled).

        Returns the doc and the tokens prefilled for it now (0 when reused).
        """
        batch = {} if batch is None else batch
        for where in (batch, self._memory):
            if key in where:
                if where is self._memory:
                    self._memory.move_to_end(key)
                self._hit("memory_hits")
                path, spill = where[key]
                return open_paged(key, path, "memory", self.device, spill), 0  # type: ignore[return-value]
        for root, source in ((self.index_root, "index"), (self.cache_root, "disk")):
            doc = open_paged(key, root / key, source, self.device) if root is not None else None
            if doc is not None:
                if source == "disk":
                    (root / key).touch()  # last use, for the KV cache's LRU eviction (longread.cache)
                self._hit(f"{source}_hits")
                return doc, 0
        spill = SpillDir() if self.cache_root is None else None  # removed when the last holder goes
        path = (self.cache_root if spill is None else spill.path) / key
        prefilled = build(path)
        if spill is not None and self.keep:
            self._memory[key] = (path, spill)
            while len(self._memory) > self.memory_docs:
                self._memory.popitem(last=False)
        batch[key] = (path, spill)
        return open_paged(key, path, "prefill", self.device, spill), prefilled  # type: ignore[return-value]
