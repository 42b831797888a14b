"""Cut documents into chunks that keep their character offsets.

Three kinds (``longread.config.ChunkerSpec.kind``):

- ``tokens``: windows of ``size`` tokens, consecutive windows sharing ``overlap`` tokens.
  Tokens come from a model's fast tokenizer (``spec.tokenizer``, through the hub) using its
  offset mapping, or, when no tokenizer is named, from a built-in word/punctuation regex.
- ``sentences``: llama-index ``SentenceSplitter`` (sentence-aware, ``size``/``overlap`` in
  tokens), each produced chunk mapped back onto exact offsets in the document.
- ``whole``: one chunk per document.

Every chunk satisfies ``chunk.text == document.text[chunk.start:chunk.end]``; chunks of a
document are ordered by ``start``, never empty or whitespace-only, and every character of
the document outside all chunks is whitespace. Chunk ids are ``f"{doc_id}#{i}"``.

Each chunk's ``provenance`` (source, pages, heading) is derived from its span and the document's
loader metadata (:func:`longread.citations.span_provenance_fn`); None for documents without any.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from ..citations import span_provenance_fn
from ..config import ChunkerSpec
from ..types import Chunk, Document

if TYPE_CHECKING:  # pragma: no cover
    from ..models.hub import ModelHub

__all__ = ["chunk_documents", "chunk_document", "chunker_tools", "regex_token_spans", "WORD_RE"]

# Words (letters/digits/underscore runs) and single punctuation or symbol characters.
WORD_RE = re.compile(r"\w+|[^\w\s]")

# Long texts go through an HF tokenizer in pieces of about this many characters: one
# multi-megabyte string is slow and memory-hungry in ``tokenizers``; a batch of pieces is
# tokenised in parallel. Pieces are cut just before whitespace, where pre-tokenizers split anyway.
_PIECE_CHARS = 50_000


def regex_token_spans(text: str) -> np.ndarray:
    """Character spans ``[[start, end], ...]`` (int64, shape (n, 2)) of the built-in word/punctuation tokens."""
    flat = np.fromiter(
        (i for m in WORD_RE.finditer(text) for i in m.span()), dtype=np.int64
    )
    return flat.reshape(-1, 2)


def _piece_bounds(text: str, piece_chars: int) -> list[tuple[int, int]]:
    bounds = []
    start, n = 0, len(text)
    while start < n:
        end = min(n, start + piece_chars)
        if end < n:
            # Cut before the last whitespace run in the piece so no token is split in two.
            cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            if cut > start:
                end = cut
        bounds.append((start, end))
        start = end
    return bounds


def hf_token_spans(text: str, tokenizer: Any, piece_chars: int = _PIECE_CHARS) -> np.ndarray:
    """Character spans of ``tokenizer``'s tokens of ``text`` (no special tokens).

    Raises ``TypeError`` when the tokenizer cannot return offsets (a slow tokenizer).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"token chunking needs a fast tokenizer with offset mapping, got {type(tokenizer).__name__}"
        )
    bounds = _piece_bounds(text, piece_chars)
    enc = tokenizer(
        [text[a:b] for a, b in bounds],
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    parts = []
    for (a, _), offs in zip(bounds, enc["offset_mapping"]):
        if offs:
            parts.append(np.asarray(offs, dtype=np.int64) + a)
    if not parts:
        return np.zeros((0, 2), dtype=np.int64)
    spans = np.concatenate(parts)
    # Zero-width tokens (some tokenizers emit them for normalised-away characters) carry no text.
    return spans[spans[:, 1] > spans[:, 0]]


def _window_chunks(doc: Document, spans: np.ndarray, size: int, overlap: int) -> list[tuple[int, int]]:
    n = len(spans)
    if n == 0:
        return []
    step = size - overlap
    starts = np.arange(0, max(1, n - overlap), step)
    starts = starts[(starts == 0) | (starts + overlap < n)]
    ends = np.minimum(starts + size, n)
    # Byte-level tokens of one character share its span, so windows may start or end inside
    # a character's token run; min/max keep the chunk on character boundaries either way.
    span_start = np.minimum.accumulate(spans[::-1, 0])[::-1]  # min start of tokens i..n-1
    span_end = np.maximum.accumulate(spans[:, 1])  # max end of tokens 0..i
    out = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        a, b = int(span_start[s]), int(span_end[e - 1])
        if b > a and doc.text[a:b].strip():
            out.append((a, b))
    return out


def _locate(text: str, piece: str, lo: int, min_end: int) -> tuple[int, int] | None:
    """Where the splitter took ``piece`` from: an occurrence starting at or after ``lo`` and ending
    after ``min_end`` (the previous chunk's end).

    A short piece can also occur inside the previous chunk (``"δέλταδέλ"`` then ``"τα"``), so the
    end bound matters; among occurrences that start no later than ``min_end`` (chunks are
    contiguous or overlap) the latest is taken, else the first after it. Whitespace may differ
    from the document if it must. ``None``: the piece lies inside the previous chunk.
    """
    best = None
    i = text.find(piece, lo)
    while i >= 0 and i <= min_end:
        if i + len(piece) > min_end:
            best = i
        i = text.find(piece, i + 1)
    if best is None and i >= 0:
        best = i
    if best is not None:
        return best, best + len(piece)
    words = piece.split()
    pattern = re.compile(r"\s+".join(re.escape(w) for w in words))
    found = None
    for m in pattern.finditer(text, lo):
        if m.end() <= min_end:
            continue
        if m.start() > min_end:
            found = found or m
            break
        found = m
    if found is None:
        # The splitter's overlap can repeat the tail of the previous chunk as a chunk of its own
        # ("... x1", then "x1"): it adds no text, so the caller drops it.
        if text.find(piece, lo) >= 0 or pattern.search(text, lo):
            return None
        raise ValueError(f"sentence splitter produced text not found in the document: {piece[:80]!r}")
    return found.start(), found.end()


def _sentence_chunks(doc: Document, splitter: Any) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    lo, prev_end = 0, 0
    for piece in splitter.split_text(doc.text):
        if not piece.strip():
            continue
        span = _locate(doc.text, piece, lo, prev_end)
        if span is None:
            continue
        a, b = span
        out.append((a, b))
        # The next chunk starts after this one's start (overlap makes it start before our end)
        # and ends after this one's end.
        lo, prev_end = a + 1, b
    return out


def _sentence_splitter(spec: ChunkerSpec, token_counter: Callable[[str], list] | None) -> Any:
    from llama_index.core.node_parser import SentenceSplitter

    kwargs: dict[str, Any] = {"chunk_size": spec.size, "chunk_overlap": spec.overlap}
    if token_counter is not None:
        kwargs["tokenizer"] = token_counter
    return SentenceSplitter(**kwargs)


def chunk_document(
    doc: Document,
    spec: ChunkerSpec,
    *,
    tokenizer: Any = None,
    splitter: Any = None,
) -> list[Chunk]:
    """Chunk one document (see the module docstring). ``tokenizer``/``splitter`` are prebuilt helpers."""
    if spec.kind == "whole":
        a = len(doc.text) - len(doc.text.lstrip())
        b = len(doc.text.rstrip())
        spans = [(a, b)]
    elif spec.kind == "tokens":
        tok_spans = regex_token_spans(doc.text) if tokenizer is None else hf_token_spans(doc.text, tokenizer)
        spans = _window_chunks(doc, tok_spans, spec.size, spec.overlap)
    elif spec.kind == "sentences":
        if splitter is None:
            splitter = _sentence_splitter(spec, None)
        spans = _sentence_chunks(doc, splitter)
    else:  # pragma: no cover - ChunkerSpec validates kind
        raise ValueError(f"unknown chunker kind {spec.kind!r}; valid kinds: tokens, sentences, whole")
    prov = span_provenance_fn(doc.id, doc.meta)
    return [
        Chunk(id=f"{doc.id}#{i}", doc_id=doc.id, text=doc.text[a:b], start=a, end=b, provenance=prov(a, b))
        for i, (a, b) in enumerate(spans)
    ]


def chunker_tools(spec: ChunkerSpec, hub: "ModelHub | None" = None) -> tuple[Any, Any]:
    """The ``(tokenizer, splitter)`` that :func:`chunk_document` needs for ``spec`` (either may be None).

    Raises ``ValueError`` when a tokenizer is named but no hub is given, and ``TypeError`` for a
    tokenizer without offsets.
    """
    tokenizer = None
    if spec.tokenizer is not None and spec.kind != "whole":
        if hub is None:
            raise ValueError(f"chunker tokenizer {spec.tokenizer!r} needs a model hub, got hub=None")
        tokenizer = hub.tokenizer(spec.tokenizer)
    splitter = None
    if spec.kind == "sentences":
        counter = None
        if tokenizer is not None:
            tok = tokenizer

            def counter(text: str) -> list:
                return tok(text, add_special_tokens=False, verbose=False)["input_ids"]

        splitter = _sentence_splitter(spec, counter)
    return tokenizer, splitter


def chunk_documents(
    documents: Iterable[Document],
    spec: ChunkerSpec,
    *,
    hub: "ModelHub | None" = None,
    show_progress: bool = False,
) -> list[Chunk]:
    """Chunk every document with ``spec``; return all chunks in document order.

    ``hub`` is needed only when ``spec.tokenizer`` names a model. Raises ``ValueError`` when a
    tokenizer is named but no hub is given, and ``TypeError`` for a tokenizer without offsets.
    """
    docs: Sequence[Document] = documents if isinstance(documents, Sequence) else list(documents)
    tokenizer, splitter = chunker_tools(spec, hub)
    it: Iterable[Document] = docs
    if show_progress:
        from tqdm.auto import tqdm

        it = tqdm(docs, desc=f"chunking ({spec.kind})", unit="doc")
    out: list[Chunk] = []
    for doc in it:
        out.extend(chunk_document(doc, spec, tokenizer=tokenizer, splitter=splitter))
    return out
