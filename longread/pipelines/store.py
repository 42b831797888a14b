"""The indexed corpus: documents and their chunks in index order, with lookups.

Two stores share one read API (what stages use): ``documents`` (a mapping id → Document, in
index order), ``chunks`` (a sequence: ``chunks[i]`` is chunk number ``i``, the row retrievers
index), ``chunk_pos`` (chunk id → position), ``doc_chunks`` (doc id → positions),
``positions_for(doc_ids)``, ``chunk_doc_positions()`` and ``iter_chunk_shards()``.

- :class:`CorpusStore` holds lists in memory (tests, tools); ``save`` writes the sharded format.
- :class:`ShardedStore` opens an index's ``corpus/`` dir lazily: opening reads one small JSON
  file, and a lookup reads only the pages it touches through memory maps, so every process that
  opens the store (each Ray actor) shares the same page-cache pages instead of a copy.

The sharded format (``corpus/``, :data:`STORE_FORMAT`), written shard by shard so a build can
resume and shards can be written by different processes::

    store.json                      {"format", "n_documents", "n_chunks", "shards": [{"n_documents",
                                     "n_chunks", "docs_sha256", "chunks_id"}, ...]}   (written last)
    docs/NNNNN/text.bin             the shard's document texts, UTF-8, concatenated
              /ids.bin, meta.bin    document ids; {"title", "meta"} JSON ("" when both are empty)
              /offsets.npy          int64 (3, n+1): byte offsets into text.bin, ids.bin, meta.bin
              /hash.npy             int64 (n,): 64-bit blake2b of each id
              /info.json            {"n_documents", "sha256" (of the documents' JSON lines), "text_bytes"}
    chunks/NNNNN/spans.npy          int64 (m, 5): document (in the shard), start, end (characters in
                                     the document), byte start, byte end (in the shard's text.bin)
                /ids.bin, id_offsets.npy, hash.npy, info.json {"n_chunks", "id", "source"}
    doc_chunk_ptr.npy               int64 (n_documents+1): document d's chunks are ptr[d]:ptr[d+1]
    chunk_doc.npy                   int64 (n_chunks,): each chunk's document position
    doc_hash.npy, doc_hash_pos.npy  id hashes sorted, and the position of each (id lookups)
    chunk_hash.npy, chunk_hash_pos.npy

A chunk's text is not stored twice: it is its document's text ``[start:end]``, cut from
``text.bin`` by byte offsets. Chunks are grouped by document, in document order (what chunking
produces); a shard holds whole documents and all their chunks.

Indexes built before the sharded store (index formats 1 and 2: ``documents.jsonl`` and
``chunks.jsonl``) still open, in memory; ``longread index`` converts them in place.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import ItemsView, Mapping, Sequence, ValuesView
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import numpy as np
from pydantic import ValidationError

from ..errors import IndexCorruptError, clip
from ..io import _FILE_MODE, atomic_dir, atomic_write_json
from ..stage import ChunkShard
from ..types import Chunk, Document

__all__ = [
    "BaseStore",
    "CorpusStore",
    "ShardedStore",
    "StoreWriter",
    "open_store",
    "shard_batches",
    "docs_digest_lines",
    "STORE_FORMAT",
    "STORE_DIR",
    "SHARD_BYTES",
    "SHARD_DOCS",
]

T = TypeVar("T", Document, Chunk)

STORE_FORMAT = 1
STORE_DIR = "corpus"
STORE_FILE = "store.json"
SHARD_BYTES = 8 << 20
"""Default characters of document text per shard: the unit of resume and of parallel work."""
SHARD_DOCS = 50_000
"""Default most documents per shard."""
# Texts from JSON may hold lone surrogates; surrogatepass keeps them byte-exact through UTF-8.
_ERR = "surrogatepass"


def _b(s: str) -> bytes:
    return s.encode("utf-8", _ERR)


def _s(b: bytes) -> str:
    return b.decode("utf-8", _ERR)


def id_hash(value: str) -> int:
    """A stable 64-bit hash of an id (blake2b; Python's ``hash`` differs per process)."""
    return int.from_bytes(hashlib.blake2b(_b(value), digest_size=8).digest(), "little", signed=True)


def _hashes(ids: Sequence[str]) -> np.ndarray:
    return np.fromiter(map(id_hash, ids), dtype=np.int64, count=len(ids))


def shard_name(k: int) -> str:
    """The directory name of shard ``k``."""
    return f"{k:05d}"


def shard_batches(documents: Iterable[Document], shard_bytes: int = SHARD_BYTES, shard_docs: int = SHARD_DOCS) -> Iterator[list[Document]]:
    """Cut a document stream into shards: a shard ends once it holds ``shard_docs`` documents or
    ``shard_bytes`` characters of text. The same stream always gives the same shards."""
    if shard_bytes <= 0 or shard_docs <= 0:
        raise ValueError(f"shard_bytes and shard_docs must be > 0, got {shard_bytes} and {shard_docs}")
    batch: list[Document] = []
    size = 0
    for d in documents:
        batch.append(d)
        size += len(d.text)
        if len(batch) >= shard_docs or size >= shard_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def docs_digest_lines(docs: Iterable[Document]) -> Iterator[bytes]:
    """Each document's canonical JSON line, as the corpus digest hashes it."""
    for d in docs:
        yield d.model_dump_json().encode("utf-8") + b"\n"


# ---------------------------------------------------------------------------------------------
# The read API


class BaseStore:
    """What every store offers; see the module docstring."""

    documents: Mapping[str, Document]
    chunks: Sequence[Chunk]
    chunk_pos: Mapping[str, int]
    doc_chunks: Mapping[str, list[int]]

    def __len__(self) -> int:
        return len(self.chunks)

    def positions_for(self, doc_ids: Iterable[str] | None) -> list[int] | None:
        """Chunk positions of the given documents (None = all); raise ``KeyError`` for an unknown doc."""
        if doc_ids is None:
            return None
        out: list[int] = []
        for d in doc_ids:
            got = self.doc_chunks.get(d)
            if got is None:
                raise KeyError(f"document {d!r} is not in the index")
            out.extend(got)
        return out

    def chunk_doc_positions(self) -> np.ndarray:
        """int64 ``(n_chunks,)``: the position (in ``documents`` order) of each chunk's document."""
        raise NotImplementedError

    def iter_chunk_shards(self) -> Iterator[ChunkShard]:
        """The chunks' texts shard by shard, in index order."""
        raise NotImplementedError

    def iter_doc_meta(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(id, meta)`` of every document, without reading their texts."""
        for d in self.documents.values():
            yield d.id, d.meta


class CorpusStore(BaseStore):
    """Documents and their chunks in memory, in index order.

    Raises ``ValueError`` for a duplicate document or chunk id or a chunk of an unknown document.
    """

    def __init__(self, documents: Iterable[Document], chunks: Iterable[Chunk]) -> None:
        self.documents: dict[str, Document] = {}
        for d in documents:
            if d.id in self.documents:
                raise ValueError(f"duplicate document id {d.id!r}")
            self.documents[d.id] = d
        self.chunks: list[Chunk] = list(chunks)
        self.chunk_pos: dict[str, int] = {}
        self.doc_chunks: dict[str, list[int]] = {d: [] for d in self.documents}
        for i, c in enumerate(self.chunks):
            if c.id in self.chunk_pos:
                raise ValueError(f"duplicate chunk id {c.id!r}")
            if c.doc_id not in self.documents:
                raise ValueError(f"chunk {c.id!r} names unknown document {c.doc_id!r}")
            self.chunk_pos[c.id] = i
            self.doc_chunks[c.doc_id].append(i)

    def chunk_doc_positions(self) -> np.ndarray:
        """See :meth:`BaseStore.chunk_doc_positions`."""
        index = {d: i for i, d in enumerate(self.documents)}
        return np.fromiter((index[c.doc_id] for c in self.chunks), dtype=np.int64, count=len(self.chunks))

    def iter_chunk_shards(self) -> Iterator[ChunkShard]:
        """One shard holding every chunk."""
        yield ChunkShard(index=0, start=0, texts=[c.text for c in self.chunks])

    def save(self, directory: Path, *, shard_bytes: int = SHARD_BYTES, shard_docs: int = SHARD_DOCS) -> None:
        """Write the store in the sharded format into ``directory`` (replacing a store there).

        Raises ``ValueError`` when the chunks are not grouped by document in document order, or a
        chunk's text is not its document's ``text[start:end]``.
        """
        order = [i for d in self.documents for i in self.doc_chunks[d]]
        if order != list(range(len(self.chunks))):
            raise ValueError("chunks must be grouped by document, in document order, to be saved")
        directory = Path(directory)
        for old in ("docs", "chunks", STORE_FILE):
            p = directory / old
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        w = StoreWriter(directory)
        n = 0
        for k, docs in enumerate(shard_batches(self.documents.values(), shard_bytes, shard_docs)):
            w.write_docs(k, docs, hashlib.sha256(b"".join(docs_digest_lines(docs))).hexdigest())
            w.write_chunks(k, [[self.chunks[i] for i in self.doc_chunks[d.id]] for d in docs], {"saved": True})
            n = k + 1
        w.finish_documents(n)
        w.finish(n)

    @classmethod
    def load(cls, directory: Path, *, rebuild_hint: str | None = None) -> BaseStore:
        """Open the store in ``directory`` (or in ``directory/corpus``, an index dir); see :func:`open_store`."""
        return open_store(directory, rebuild_hint=rebuild_hint)


def open_store(directory: Path, *, rebuild_hint: str | None = None) -> BaseStore:
    """The store in ``directory``: a sharded store (``store.json`` there or in ``directory/corpus``),
    opened lazily, or an older index's ``documents.jsonl``/``chunks.jsonl``, read into memory.

    Raises ``FileNotFoundError`` when there is none, :class:`IndexCorruptError` naming the file
    (and ``rebuild_hint``, e.g. the rebuild command) when one does not parse.
    """
    directory = Path(directory)
    hint = f"; rebuild the index: {rebuild_hint}" if rebuild_hint else "; rebuild the index (--rebuild)"
    for d in (directory, directory / STORE_DIR):
        if (d / STORE_FILE).is_file():
            return ShardedStore(d, hint=hint)
    if not (directory / "chunks.jsonl").is_file() and not (directory / "documents.jsonl").is_file():
        raise FileNotFoundError(f"{str(directory)!r} holds no corpus store ({STORE_DIR}/{STORE_FILE}); is it an index dir?")
    docs = list(_records(directory / "documents.jsonl", Document, hint))
    chunks = list(_records(directory / "chunks.jsonl", Chunk, hint))
    try:
        return CorpusStore(docs, chunks)
    except ValueError as e:
        raise IndexCorruptError(f"index {str(directory)!r}: {e}{hint}") from None


def _records(path: Path, model: type[T], hint: str) -> Iterator[T]:
    """The records of a JSONL file; a bad one raises naming the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"index file {path} is missing{hint}")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise IndexCorruptError(f"{path}:{lineno}: not UTF-8 ({e.reason}){hint}") from None
            if not line.strip():
                continue
            try:
                rec = model.model_validate_json(line)
            except ValidationError as e:
                first = e.errors()[0]
                raise IndexCorruptError(f"{path}:{lineno}: bad {model.__name__.lower()} record ({clip(first['msg'], 200)}){hint}") from None
            yield rec


# ---------------------------------------------------------------------------------------------
# Shard files


class _Blob:
    """A read-only file mapped into memory: pages are read on first touch and shared by every
    process that maps the same file."""

    def __init__(self, path: Path) -> None:
        self._mm: mmap.mmap | None = None
        if path.stat().st_size:
            with open(path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __getitem__(self, s: slice) -> bytes:
        return self._mm[s] if self._mm is not None else b""


def _npy(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


class _ShardFiles:
    """The files of one shard, each opened on first use."""

    def __init__(self, root: Path, k: int) -> None:
        self.docs = root / "docs" / shard_name(k)
        self.chunks = root / "chunks" / shard_name(k)
        self._prov_cache: dict[int, Any] = {}

    @cached_property
    def offsets(self) -> np.ndarray:
        return _npy(self.docs / "offsets.npy")

    @cached_property
    def text(self) -> _Blob:
        return _Blob(self.docs / "text.bin")

    @cached_property
    def ids(self) -> _Blob:
        return _Blob(self.docs / "ids.bin")

    @cached_property
    def meta(self) -> _Blob:
        return _Blob(self.docs / "meta.bin")

    @cached_property
    def spans(self) -> np.ndarray:
        return _npy(self.chunks / "spans.npy")

    @cached_property
    def chunk_ids(self) -> _Blob:
        return _Blob(self.chunks / "ids.bin")

    @cached_property
    def chunk_id_offsets(self) -> np.ndarray:
        return _npy(self.chunks / "id_offsets.npy")

    def n_documents(self) -> int:
        return self.offsets.shape[1] - 1

    def doc_id(self, j: int) -> str:
        o = self.offsets[1]
        return _s(self.ids[int(o[j]) : int(o[j + 1])])

    def chunk_id(self, j: int) -> str:
        o = self.chunk_id_offsets
        return _s(self.chunk_ids[int(o[j]) : int(o[j + 1])])

    def doc_text(self, j: int) -> str:
        o = self.offsets[0]
        return _s(self.text[int(o[j]) : int(o[j + 1])])

    def doc_meta(self, j: int) -> dict[str, Any]:
        o = self.offsets[2]
        raw = self.meta[int(o[j]) : int(o[j + 1])]
        return json.loads(raw) if raw else {}

    def document(self, j: int) -> Document:
        m = self.doc_meta(j)
        # Validated when it was written; constructing without validation keeps lookups cheap.
        return Document.model_construct(id=self.doc_id(j), text=self.doc_text(j), title=m.get("title"), meta=m.get("meta") or {})

    def documents(self) -> list[Document]:
        return [self.document(j) for j in range(self.n_documents())]

    def chunk(self, j: int) -> Chunk:
        d, start, end, bs, be = (int(x) for x in self.spans[j])
        doc_id = self.doc_id(d)
        # Validated when it was written; constructing without validation keeps lookups cheap.
        return Chunk.model_construct(id=self.chunk_id(j), doc_id=doc_id, text=_s(self.text[bs:be]), start=start, end=end,
                                     provenance=self._provenance(d, doc_id)(start, end))

    def _provenance(self, d: int, doc_id: str) -> Any:
        # Chunks are stored as spans; their pages and heading come from the document's meta (page
        # starts, headings), parsed once per document for the few documents a query touches.
        fn = self._prov_cache.get(d)
        if fn is None:
            from ..citations import span_provenance_fn

            fn = span_provenance_fn(doc_id, (self.doc_meta(d).get("meta") or {}))
            if len(self._prov_cache) >= 64:
                self._prov_cache.pop(next(iter(self._prov_cache)))
            self._prov_cache[d] = fn
        return fn

    def chunk_texts(self) -> list[str]:
        return [_s(self.text[int(bs) : int(be)]) for bs, be in self.spans[:, 3:5].tolist()]


def _meta_bytes(d: Document) -> bytes:
    if d.title is None and not d.meta:
        return b""
    return _b(json.dumps(d.model_dump(mode="json", include={"title", "meta"}), ensure_ascii=False, separators=(",", ":")))


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """``np.save`` to a temp file renamed over ``path`` (a killed writer leaves a stale temp, not half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        os.chmod(tmp, _FILE_MODE)  # mkstemp alone gives 0o600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_blob(path: Path, parts: Sequence[bytes]) -> np.ndarray:
    """Write ``parts`` concatenated; return their offsets (int64, len+1)."""
    off = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)), out=off[1:])
    with open(path, "wb") as f:
        for p in parts:
            f.write(p)
    return off


def _char_to_byte(text: str, raw: bytes) -> np.ndarray | None:
    """Byte offset of every character position of ``text`` in ``raw`` (its UTF-8); None when ASCII."""
    if len(raw) == len(text):
        return None
    cp = np.frombuffer(text.encode("utf-32-le", _ERR), dtype=np.uint32)
    width = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
    out = np.zeros(len(cp) + 1, dtype=np.int64)
    np.cumsum(width, out=out[1:])
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


class StoreWriter:
    """Writes a sharded store into ``directory``, one shard at a time (any order, any process).

    Each shard's documents and chunks are written to a temp dir renamed into place when complete,
    so a killed writer leaves only whole shards; :meth:`docs_done` / :meth:`chunks_done` say which
    can be kept. :meth:`finish_documents` then :meth:`finish` write the lookup arrays and
    ``store.json``.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        (self.dir / "docs").mkdir(parents=True, exist_ok=True)
        (self.dir / "chunks").mkdir(parents=True, exist_ok=True)

    def docs_info(self, k: int) -> dict[str, Any] | None:
        """The info of shard ``k``'s documents, None when they are not (completely) written."""
        return _read_json(self.dir / "docs" / shard_name(k) / "info.json")

    def chunks_info(self, k: int) -> dict[str, Any] | None:
        """The info of shard ``k``'s chunks, None when they are not (completely) written."""
        return _read_json(self.dir / "chunks" / shard_name(k) / "info.json")

    def documents(self, k: int) -> list[Document]:
        """The documents of shard ``k`` (written by :meth:`write_docs`)."""
        return _ShardFiles(self.dir, k).documents()

    def docs_done(self, k: int, sha256: str) -> bool:
        """True when shard ``k`` already holds documents whose JSON lines hash to ``sha256``."""
        info = self.docs_info(k)
        return info is not None and info.get("sha256") == sha256

    @staticmethod
    def chunks_id(source: dict[str, Any]) -> str:
        """The identity of a chunk shard made from ``source`` (what later per-shard work keys on)."""
        return hashlib.sha256(json.dumps(source, sort_keys=True).encode("utf-8")).hexdigest()

    def chunks_done(self, k: int, source: dict[str, Any]) -> bool:
        """True when shard ``k``'s chunks were made from ``source`` (its documents and chunker)."""
        info = self.chunks_info(k)
        return info is not None and info.get("id") == self.chunks_id(source)

    def write_docs(self, k: int, docs: Sequence[Document], sha256: str) -> dict[str, Any]:
        """Write shard ``k``'s documents (replacing what is there); return its info."""
        texts = [_b(d.text) for d in docs]
        with atomic_dir(self.dir / "docs" / shard_name(k)) as tmp:
            off = np.stack([
                _write_blob(tmp / "text.bin", texts),
                _write_blob(tmp / "ids.bin", [_b(d.id) for d in docs]),
                _write_blob(tmp / "meta.bin", [_meta_bytes(d) for d in docs]),
            ])
            np.save(tmp / "offsets.npy", off, allow_pickle=False)
            np.save(tmp / "hash.npy", _hashes([d.id for d in docs]), allow_pickle=False)
            info = {"n_documents": len(docs), "sha256": sha256, "text_bytes": int(off[0, -1])}
            atomic_write_json(tmp / "info.json", info)
        return info

    def write_chunks(self, k: int, chunk_lists: Sequence[Sequence[Chunk]], source: dict[str, Any]) -> dict[str, Any]:
        """Write shard ``k``'s chunks: ``chunk_lists[j]`` are the chunks of its ``j``-th document.

        Raises ``ValueError`` when a chunk belongs to another document or its text is not the
        document's ``text[start:end]``.
        """
        sh = _ShardFiles(self.dir, k)
        if len(chunk_lists) != sh.n_documents():
            raise ValueError(f"shard {k}: {len(chunk_lists)} chunk lists for {sh.n_documents()} documents")
        rows: list[tuple[int, int, int, int, int]] = []
        ids: list[str] = []
        text_off = sh.offsets[0]
        for j, chunks in enumerate(chunk_lists):
            if not chunks:
                continue
            doc_id = sh.doc_id(j)
            base = int(text_off[j])
            raw = sh.text[base : int(text_off[j + 1])]
            text = _s(raw)
            to_byte = _char_to_byte(text, raw)
            for c in chunks:
                if c.doc_id != doc_id:
                    raise ValueError(f"chunk {c.id!r} names document {c.doc_id!r} but is listed under {doc_id!r}")
                if c.end > len(text) or text[c.start : c.end] != c.text:
                    raise ValueError(f"chunk {c.id!r}: its text is not text[{c.start}:{c.end}] of document {doc_id!r}")
                bs, be = (c.start, c.end) if to_byte is None else (int(to_byte[c.start]), int(to_byte[c.end]))
                rows.append((j, c.start, c.end, base + bs, base + be))
                ids.append(c.id)
        spans = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
        with atomic_dir(self.dir / "chunks" / shard_name(k)) as tmp:
            np.save(tmp / "spans.npy", spans, allow_pickle=False)
            np.save(tmp / "id_offsets.npy", _write_blob(tmp / "ids.bin", [_b(i) for i in ids]), allow_pickle=False)
            np.save(tmp / "hash.npy", _hashes(ids), allow_pickle=False)
            info = {"n_chunks": len(ids), "id": self.chunks_id(source), "source": source}
            atomic_write_json(tmp / "info.json", info)
        return info

    def _drop_from(self, sub: str, n: int) -> None:
        for p in (self.dir / sub).iterdir():
            if p.is_dir() and p.name.isdigit() and int(p.name) >= n:
                shutil.rmtree(p)

    def finish_documents(self, n_shards: int) -> int:
        """Drop shards numbered ``n_shards`` and above, check ids and write the document lookup.

        Returns the number of documents. Raises ``ValueError`` for a duplicate document id.
        """
        self._drop_from("docs", n_shards)
        hashes = [np.load(self.dir / "docs" / shard_name(k) / "hash.npy") for k in range(n_shards)]
        starts = np.cumsum([0] + [len(h) for h in hashes])
        self._lookup("doc", np.concatenate(hashes) if hashes else np.zeros(0, np.int64), starts, "document",
                     lambda s, j: _ShardFiles(self.dir, s).doc_id(j))
        return int(starts[-1])

    def finish(self, n_shards: int) -> dict[str, Any]:
        """Write the chunk lookups and ``store.json`` (after every shard's chunks); return it.

        Raises ``ValueError`` for a duplicate chunk id or a shard whose chunks are missing.
        """
        self._drop_from("chunks", n_shards)
        shards, ptr_parts, doc_parts, hashes = [], [], [], []
        n_docs = 0
        for k in range(n_shards):
            d, c = self.docs_info(k), self.chunks_info(k)
            if d is None or c is None:
                raise ValueError(f"store {str(self.dir)!r}: shard {k} is not complete")
            sh = _ShardFiles(self.dir, k)
            local = np.asarray(sh.spans[:, 0])
            counts = np.bincount(local, minlength=d["n_documents"])
            ptr_parts.append(counts)
            doc_parts.append(local + n_docs)
            hashes.append(np.load(sh.chunks / "hash.npy"))
            n_docs += d["n_documents"]
            shards.append({"n_documents": d["n_documents"], "n_chunks": c["n_chunks"], "docs_sha256": d["sha256"], "chunks_id": c["id"]})
        ptr = np.zeros(n_docs + 1, dtype=np.int64)
        if ptr_parts:
            np.cumsum(np.concatenate(ptr_parts), out=ptr[1:])
        _save_npy(self.dir / "doc_chunk_ptr.npy", ptr)
        _save_npy(self.dir / "chunk_doc.npy", np.concatenate(doc_parts) if doc_parts else np.zeros(0, np.int64))
        cstarts = np.cumsum([0] + [s["n_chunks"] for s in shards])
        self._lookup("chunk", np.concatenate(hashes) if hashes else np.zeros(0, np.int64), cstarts, "chunk",
                     lambda s, j: _ShardFiles(self.dir, s).chunk_id(j))
        meta = {"format": STORE_FORMAT, "n_documents": n_docs, "n_chunks": int(cstarts[-1]), "shards": shards}
        atomic_write_json(self.dir / STORE_FILE, meta)
        return meta

    def _lookup(self, name: str, hashes: np.ndarray, starts: np.ndarray, what: str, id_at) -> None:
        order = np.argsort(hashes, kind="stable")
        sorted_h = hashes[order]
        # Equal hashes are (almost always) equal ids; compare the ids to tell a collision apart.
        groups: dict[int, list[int]] = {}
        for j in np.nonzero(sorted_h[1:] == sorted_h[:-1])[0].tolist():
            g = groups.setdefault(int(sorted_h[j]), [])
            g.extend(p for p in (int(order[j]), int(order[j + 1])) if p not in g)
        for positions in groups.values():
            seen: set[str] = set()
            for pos in sorted(positions):
                s = int(np.searchsorted(starts, pos, side="right")) - 1
                rid = id_at(s, pos - int(starts[s]))
                if rid in seen:
                    raise ValueError(f"duplicate {what} id {rid!r}")
                seen.add(rid)
        _save_npy(self.dir / f"{name}_hash.npy", sorted_h)
        _save_npy(self.dir / f"{name}_hash_pos.npy", order.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# The lazy store


class ShardedStore(BaseStore):
    """A sharded store opened lazily (see the module docstring): nothing but ``store.json`` is read
    until a lookup needs it, and then only the pages it touches.

    Raises :class:`IndexCorruptError` (with ``hint``) when ``store.json`` is malformed.
    """

    def __init__(self, directory: Path, *, hint: str = "") -> None:
        self.dir = Path(directory)
        meta = _read_json(self.dir / STORE_FILE)
        if meta is None or meta.get("format") != STORE_FORMAT or not isinstance(meta.get("shards"), list):
            raise IndexCorruptError(
                f"{self.dir / STORE_FILE}: not a store of format {STORE_FORMAT}{hint or '; rebuild the index (--rebuild)'}"
            )
        self.meta = meta
        self.n_shards = len(meta["shards"])
        self._doc_starts = np.cumsum([0] + [int(s["n_documents"]) for s in meta["shards"]]).astype(np.int64)
        self._chunk_starts = np.cumsum([0] + [int(s["n_chunks"]) for s in meta["shards"]]).astype(np.int64)
        self._shards: dict[int, _ShardFiles] = {}
        self.documents = _Documents(self)
        self.chunks = _Chunks(self)
        self.chunk_pos = _ChunkPos(self)
        self.doc_chunks = _DocChunks(self)

    def __len__(self) -> int:
        return int(self._chunk_starts[-1])

    @property
    def n_documents(self) -> int:
        """Number of documents."""
        return int(self._doc_starts[-1])

    def shard_source(self, k: int) -> str:
        """The identity of shard ``k``'s chunks (changes when its documents or the chunker do)."""
        return str(self.meta["shards"][k]["chunks_id"])

    def _shard(self, k: int) -> _ShardFiles:
        sh = self._shards.get(k)
        if sh is None:
            sh = self._shards[k] = _ShardFiles(self.dir, k)
        return sh

    @cached_property
    def _ptr(self) -> np.ndarray:
        return _npy(self.dir / "doc_chunk_ptr.npy")

    @cached_property
    def _index(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {n: (_npy(self.dir / f"{n}_hash.npy"), _npy(self.dir / f"{n}_hash_pos.npy")) for n in ("doc", "chunk")}

    def _locate(self, starts: np.ndarray, pos: int) -> tuple[_ShardFiles, int]:
        s = int(np.searchsorted(starts, pos, side="right")) - 1
        return self._shard(s), pos - int(starts[s])

    def doc_id_at(self, pos: int) -> str:
        """The id of document number ``pos``."""
        sh, j = self._locate(self._doc_starts, pos)
        return sh.doc_id(j)

    def document_at(self, pos: int) -> Document:
        """Document number ``pos``."""
        sh, j = self._locate(self._doc_starts, pos)
        return sh.document(j)

    def chunk_at(self, pos: int) -> Chunk:
        """Chunk number ``pos``."""
        sh, j = self._locate(self._chunk_starts, pos)
        return sh.chunk(j)

    def chunk_id_at(self, pos: int) -> str:
        """The id of chunk number ``pos``."""
        sh, j = self._locate(self._chunk_starts, pos)
        o = sh.chunk_id_offsets
        return _s(sh.chunk_ids[int(o[j]) : int(o[j + 1])])

    def _find(self, name: str, key: str, id_at) -> int | None:
        if not isinstance(key, str):
            return None
        hashes, pos = self._index[name]
        h = id_hash(key)
        i = int(np.searchsorted(hashes, h))
        while i < len(hashes) and int(hashes[i]) == h:
            p = int(pos[i])
            if id_at(p) == key:
                return p
            i += 1
        return None

    def doc_position(self, doc_id: str) -> int | None:
        """The position of document ``doc_id``, or None."""
        return self._find("doc", doc_id, self.doc_id_at)

    def chunk_position(self, chunk_id: str) -> int | None:
        """The position of chunk ``chunk_id``, or None."""
        return self._find("chunk", chunk_id, self.chunk_id_at)

    def chunk_range(self, pos: int) -> range:
        """The chunk positions of document number ``pos``."""
        return range(int(self._ptr[pos]), int(self._ptr[pos + 1]))

    def positions_for(self, doc_ids: Iterable[str] | None) -> list[int] | None:
        """Chunk positions of the given documents (None = all); raise ``KeyError`` for an unknown doc."""
        if doc_ids is None:
            return None
        out: list[int] = []
        for d in doc_ids:
            p = self.doc_position(d)
            if p is None:
                raise KeyError(f"document {d!r} is not in the index")
            out.extend(self.chunk_range(p))
        return out

    def chunk_doc_positions(self) -> np.ndarray:
        """See :meth:`BaseStore.chunk_doc_positions` (a read-only memory map)."""
        return _npy(self.dir / "chunk_doc.npy")

    def chunk_shard(self, k: int) -> ChunkShard:
        """The chunk texts of shard ``k``."""
        return ChunkShard(index=k, start=int(self._chunk_starts[k]), texts=self._shard(k).chunk_texts())

    def iter_chunk_shards(self) -> Iterator[ChunkShard]:
        """The chunks' texts shard by shard, in index order."""
        for k in range(self.n_shards):
            yield self.chunk_shard(k)

    def iter_documents(self) -> Iterator[Document]:
        """Every document, in index order."""
        for k in range(self.n_shards):
            sh = self._shard(k)
            for j in range(sh.n_documents()):
                yield sh.document(j)

    def iter_doc_ids(self) -> Iterator[str]:
        """Every document id, in index order."""
        for k in range(self.n_shards):
            sh = self._shard(k)
            for j in range(sh.n_documents()):
                yield sh.doc_id(j)

    def iter_doc_meta(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(id, meta)`` of every document, without reading their texts."""
        for k in range(self.n_shards):
            sh = self._shard(k)
            for j in range(sh.n_documents()):
                yield sh.doc_id(j), sh.doc_meta(j).get("meta") or {}

    def iter_chunks(self) -> Iterator[Chunk]:
        """Every chunk, in index order."""
        for k in range(self.n_shards):
            sh = self._shard(k)
            for j in range(int(self._chunk_starts[k + 1] - self._chunk_starts[k])):
                yield sh.chunk(j)


class _Documents(Mapping[str, Document]):
    """``store.documents``: id → Document, iterated in index order."""

    def __init__(self, store: ShardedStore) -> None:
        self._s = store

    def __getitem__(self, doc_id: str) -> Document:
        p = self._s.doc_position(doc_id)
        if p is None:
            raise KeyError(doc_id)
        return self._s.document_at(p)

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and self._s.doc_position(doc_id) is not None

    def __iter__(self) -> Iterator[str]:
        return self._s.iter_doc_ids()

    def __len__(self) -> int:
        return self._s.n_documents

    def values(self) -> ValuesView[Document]:
        return _DocValues(self)

    def items(self) -> ItemsView[str, Document]:
        return _DocItems(self)


class _DocValues(ValuesView):
    def __iter__(self) -> Iterator[Document]:
        return self._mapping._s.iter_documents()


class _DocItems(ItemsView):
    def __iter__(self) -> Iterator[tuple[str, Document]]:
        return ((d.id, d) for d in self._mapping._s.iter_documents())


class _Chunks(Sequence[Chunk]):
    """``store.chunks``: chunk number ``i`` → Chunk."""

    def __init__(self, store: ShardedStore) -> None:
        self._s = store

    def __len__(self) -> int:
        return len(self._s)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._s.chunk_at(j) for j in range(*i.indices(len(self)))]
        i = int(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"chunk index {i} out of range for {n} chunks")
        return self._s.chunk_at(i)

    def __iter__(self) -> Iterator[Chunk]:
        return self._s.iter_chunks()


class _ChunkPos(Mapping[str, int]):
    """``store.chunk_pos``: chunk id → position."""

    def __init__(self, store: ShardedStore) -> None:
        self._s = store

    def __getitem__(self, chunk_id: str) -> int:
        p = self._s.chunk_position(chunk_id)
        if p is None:
            raise KeyError(chunk_id)
        return p

    def __contains__(self, chunk_id: object) -> bool:
        return isinstance(chunk_id, str) and self._s.chunk_position(chunk_id) is not None

    def __iter__(self) -> Iterator[str]:
        return (self._s.chunk_id_at(i) for i in range(len(self._s)))

    def __len__(self) -> int:
        return len(self._s)


class _DocChunks(Mapping[str, list[int]]):
    """``store.doc_chunks``: document id → its chunk positions."""

    def __init__(self, store: ShardedStore) -> None:
        self._s = store

    def __getitem__(self, doc_id: str) -> list[int]:
        p = self._s.doc_position(doc_id)
        if p is None:
            raise KeyError(doc_id)
        return list(self._s.chunk_range(p))

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and self._s.doc_position(doc_id) is not None

    def __iter__(self) -> Iterator[str]:
        return self._s.iter_doc_ids()

    def __len__(self) -> int:
        return self._s.n_documents
