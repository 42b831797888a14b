"""The indexed corpus: documents and chunks, with lookups, persisted as JSONL in an index dir."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from pydantic import ValidationError

from ..errors import IndexCorruptError, clip
from ..io import atomic_write_text
from ..types import Chunk, Document

__all__ = ["CorpusStore"]

T = TypeVar("T", Document, Chunk)


class CorpusStore:
    """Documents and their chunks in index order.

    ``chunks[i]`` is chunk number ``i``; retrievers index vectors and BM25 rows by that number.
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

    def __len__(self) -> int:
        return len(self.chunks)

    def positions_for(self, doc_ids: Iterable[str] | None) -> list[int] | None:
        """Chunk positions of the given documents (None = all); raise ``KeyError`` for an unknown doc."""
        if doc_ids is None:
            return None
        out: list[int] = []
        for d in doc_ids:
            if d not in self.doc_chunks:
                raise KeyError(f"document {d!r} is not in the index")
            out.extend(self.doc_chunks[d])
        return out

    def save(self, directory: Path) -> None:
        """Write ``documents.jsonl`` and ``chunks.jsonl`` atomically into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            directory / "documents.jsonl",
            "".join(d.model_dump_json() + "\n" for d in self.documents.values()),
        )
        atomic_write_text(directory / "chunks.jsonl", "".join(c.model_dump_json() + "\n" for c in self.chunks))

    @classmethod
    def load(cls, directory: Path, *, rebuild_hint: str | None = None) -> "CorpusStore":
        """Read a store written by ``save``.

        Raises :class:`IndexCorruptError` naming the file and line of a record that does not parse
        (``rebuild_hint``, e.g. the rebuild command, is appended) and ``FileNotFoundError`` for a
        missing file.
        """
        hint = f"; rebuild the index: {rebuild_hint}" if rebuild_hint else "; rebuild the index (--rebuild)"
        docs = list(_records(directory / "documents.jsonl", Document, hint))
        chunks = list(_records(directory / "chunks.jsonl", Chunk, hint))
        try:
            return cls(docs, chunks)
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
