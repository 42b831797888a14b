"""Provenance of chunks and the citations a prediction lists.

A chunk's :class:`~longread.types.Provenance` (source, pages, heading) is derived once, when the
chunk is cut, from its document's loader metadata (``meta["source"]``, ``meta["page_starts"]``,
``meta["headings"]``; see :mod:`longread.loaders`). A :class:`~longread.types.Citation` is a
passage located in its document: the chunk's id, span and provenance plus the text the reader saw.

Which passages a prediction cites is the reader's decision:

- ``cite`` answer style (``reader.hf``): the passages the answer marks with ``[n]``, ``cited=True``;
- every other style of a passage reader (``reader.hf``, ``reader.refrag``): the passages it read,
  in prompt order, ``cited=False``;
- whole-document readers (``reader.long_context``, ``reader.retrolm``, a ``reader.route``
  fallback) read no passages and list none.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from .loaders.provenance import provenance
from .types import Chunk, Citation, Document, Passage, Provenance

__all__ = ["meta_provenance", "span_provenance", "span_provenance_fn", "chunk_provenance", "citations_for"]

_KEYS = ("source", "page_starts", "headings")


def _check_meta(doc_id: str, meta: Mapping[str, Any]) -> None:
    starts = meta.get("page_starts")
    if starts is not None and not (
        isinstance(starts, list) and all(type(x) is int and x >= 0 for x in starts) and starts == sorted(starts)
    ):
        raise ValueError(f"document {doc_id!r}: meta.page_starts must be an ascending list of character offsets, got {str(starts)[:80]}")
    heads = meta.get("headings")
    if heads is not None and not (
        isinstance(heads, list)
        and all(isinstance(h, (list, tuple)) and len(h) == 3 and type(h[0]) is int and isinstance(h[2], str) for h in heads)
        and [h[0] for h in heads] == sorted(h[0] for h in heads)
    ):
        raise ValueError(f"document {doc_id!r}: meta.headings must be [offset, level, text] lists in offset order, got {str(heads)[:80]}")


def meta_provenance(doc: Document, start: int, end: int) -> Provenance | None:
    """The provenance of ``doc.text[start:end]`` from the document's metadata.

    None when ``doc.meta`` records no source, pages or headings (a plain JSONL corpus). A
    ``source`` that is not a string is ignored. Raises ``ValueError`` naming the document for
    malformed ``page_starts`` or ``headings`` (they are longread's own format, so a wrong shape
    is a mistake, not free-form metadata).
    """
    return span_provenance(doc.id, doc.meta, start, end)


def span_provenance(doc_id: str, meta: Mapping[str, Any], start: int, end: int) -> Provenance | None:
    """:func:`meta_provenance` from a document's id and ``meta`` alone (a store that keeps the
    metadata apart from the text need not read the text)."""
    return span_provenance_fn(doc_id, meta)(start, end)


def span_provenance_fn(doc_id: str, meta: Mapping[str, Any]) -> Callable[[int, int], Provenance | None]:
    """``(start, end) -> Provenance | None`` for many spans of one document: ``meta`` is checked
    once (what chunking a long PDF into thousands of chunks needs)."""
    if not any(meta.get(k) for k in _KEYS):
        return lambda start, end: None
    _check_meta(doc_id, meta)
    source = meta.get("source") if isinstance(meta.get("source"), str) else None

    def fn(start: int, end: int) -> Provenance:
        prov = provenance(meta, start, end)
        return Provenance(source=source, pages=prov["pages"], heading=prov["heading"])

    return fn


def chunk_provenance(chunk: Chunk, document: Document | None) -> Provenance:
    """The chunk's recorded provenance, else (chunks cut before provenance was recorded, stores
    that keep only spans) the one derived from ``document``; empty when neither knows."""
    if chunk.provenance is not None:
        return chunk.provenance
    if document is not None:
        prov = meta_provenance(document, chunk.start, chunk.end)
        if prov is not None:
            return prov
    return Provenance()


def citations_for(
    passages: Sequence[Passage],
    documents: Mapping[str, Document] | None,
    *,
    numbers: Sequence[int] | None = None,
    cited: bool,
) -> list[Citation]:
    """Citations of ``passages`` (in prompt order, so passage ``i`` is marker ``[i + 1]``).

    ``numbers`` picks the 1-based passages to cite, in that order (the ``[n]`` markers of an
    answer); None cites every passage. ``documents`` (id → document, e.g. ``store.documents``)
    supplies provenance for chunks that carry none. Raises ``IndexError`` for a number outside
    ``1..len(passages)``.
    """
    picks = range(1, len(passages) + 1) if numbers is None else numbers
    out = []
    for n in picks:
        if not 1 <= n <= len(passages):
            raise IndexError(f"citation [{n}] is outside the {len(passages)} passages")
        p = passages[n - 1]
        c = p.chunk
        prov = chunk_provenance(c, documents.get(c.doc_id) if documents is not None else None)
        out.append(
            Citation(n=n, doc_id=c.doc_id, chunk_id=c.id, source=prov.source, pages=prov.pages, heading=prov.heading,
                     start=c.start, end=c.end, text=p.text, cited=cited)
        )
    return out
