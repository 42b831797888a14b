"""Whole-document encoding with a long encoder, and document-level score aggregation.

A document up to the encoder's token limit is embedded as one unit; a longer one is cut into
the *fewest* windows that fit (``ceil(n / budget)`` windows of near-equal token counts, cut at
token boundaries, so no text is lost and no window is tiny). Scores of windows roll up to their
chunk by ``max``; chunk scores roll up to documents by ``max`` or the sum of the top ``m``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np

__all__ = [
    "token_budget", "window_spans", "encode_windows", "max_by_owner", "aggregate_docs", "rank_chunks_or_docs", "Aggregate",
]

Aggregate = Literal["max", "sum_top_m"]

# Re-tokenising a cut-out substring can add a token or two at its edges; keep a margin.
_MARGIN = 8


def token_budget(encoder: Any, kind: str = "document") -> int:
    """Tokens of raw text that fit one window: ``max_tokens`` minus special tokens, prefix and a margin."""
    overhead = 2
    if hasattr(encoder, "token_ids"):
        # native encoders report their real per-text overhead (prefix + special tokens)
        overhead = len(encoder.token_ids(["a"], kind=kind)[0]) - 1
    budget = int(encoder.max_tokens) - overhead - _MARGIN
    if budget < 1:
        raise ValueError(f"encoder {getattr(encoder, 'name', '?')!r}: max_tokens={encoder.max_tokens} leaves no room for text")
    return budget


def window_spans(tokenizer: Any, text: str, budget: int) -> list[tuple[int, int]]:
    """Character spans of the fewest windows of at most ``budget`` tokens covering ``text``.

    Uses the fast tokenizer's offset mapping. Returns ``[(0, len(text))]`` when it fits.
    Raises ``ValueError`` for a budget < 1.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
    offsets = [o for o in enc["offset_mapping"] if o[1] > o[0]]
    n = len(offsets)
    if n <= budget:
        return [(0, len(text))]
    w = math.ceil(n / budget)
    bounds = [round(i * n / w) for i in range(w + 1)]
    spans = []
    for i in range(w):
        a, b = bounds[i], bounds[i + 1]
        start = 0 if i == 0 else offsets[a][0]
        end = len(text) if i == w - 1 else offsets[b][0]
        spans.append((start, end))
    return spans


def encode_windows(
    encoder: Any, texts: Sequence[str], *, kind: str = "document", batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
    """Embed each text whole, or as its fewest fitting windows.

    Returns ``(vectors, owner, spans)``: one row per window, ``owner[r]`` = index of the text,
    ``spans[r] = (text index, start, end)``. Every text gets at least one row.
    """
    budget = token_budget(encoder, kind)
    pieces: list[str] = []
    owner: list[int] = []
    spans: list[tuple[int, int, int]] = []
    for i, t in enumerate(texts):
        for s, e in window_spans(encoder.tokenizer, t, budget):
            piece = t[s:e]
            if not piece.strip():
                continue
            pieces.append(piece)
            owner.append(i)
            spans.append((i, s, e))
    missing = sorted(set(range(len(texts))) - set(owner))
    if missing:
        raise ValueError(f"texts {missing[:10]} are empty; every document must have content")
    vectors = encoder.encode(pieces, kind=kind, batch_size=batch_size)
    return np.asarray(vectors, dtype=np.float32), np.asarray(owner, dtype=np.int64), spans


def max_by_owner(scores: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """``out[j] = max(scores[owner == j])``; ``-inf`` where ``j`` owns nothing."""
    out = np.full(n, -np.inf, dtype=np.float64)
    np.maximum.at(out, np.asarray(owner, dtype=np.int64), np.asarray(scores, dtype=np.float64))
    return out


def aggregate_docs(chunk_scores: np.ndarray, chunk_doc: np.ndarray, n_docs: int, how: Aggregate = "max", m: int = 3) -> np.ndarray:
    """Document scores from chunk scores: ``max`` or the sum of each document's top ``m`` chunks.

    ``chunk_doc[i]`` is the document index of chunk ``i``; chunks scored ``-inf`` are ignored;
    a document with no scored chunk gets ``-inf``. Raises ``ValueError`` for a bad ``how``/``m``.
    """
    if how not in ("max", "sum_top_m"):
        raise ValueError(f"aggregation must be 'max' or 'sum_top_m', got {how!r}")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    s = np.asarray(chunk_scores, dtype=np.float64)
    d = np.asarray(chunk_doc, dtype=np.int64)
    if how == "max" or m == 1:
        return max_by_owner(s, d, n_docs)
    out = np.full(n_docs, -np.inf, dtype=np.float64)
    ok = np.isfinite(s)
    s, d = s[ok], d[ok]
    order = np.lexsort((-s, d))  # by doc, best first within doc
    s, d = s[order], d[order]
    starts = np.searchsorted(d, np.arange(n_docs), side="left")
    ends = np.searchsorted(d, np.arange(n_docs), side="right")
    for j in np.nonzero(ends > starts)[0]:
        out[j] = s[starts[j] : min(ends[j], starts[j] + m)].sum()
    return out


def rank_chunks_or_docs(
    chunk_scores: np.ndarray,
    chunk_doc: np.ndarray,
    n_docs: int,
    k: int,
    how: Literal["none", "max", "sum_top_m"] = "none",
    m: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(positions, scores)`` over chunks scored finite, best first (ties: lower position).

    With ``how`` ``"max"``/``"sum_top_m"``, documents are ranked instead: each document is
    represented by its best chunk, carrying the document's aggregated score.
    """
    s = np.asarray(chunk_scores, dtype=np.float64)
    if how == "none":
        pos = np.nonzero(np.isfinite(s))[0]
        order = np.lexsort((pos, -s[pos]))[:k]
        return pos[order].astype(np.int64), s[pos[order]]
    d = np.asarray(chunk_doc, dtype=np.int64)
    doc_sc = aggregate_docs(s, d, n_docs, how, m)
    # best chunk of each document: highest score, then lowest position
    ok = np.nonzero(np.isfinite(s))[0]
    order = np.lexsort((ok, -s[ok], d[ok]))
    first = np.ones(len(order), dtype=bool)
    first[1:] = d[ok][order][1:] != d[ok][order][:-1]
    rep_pos = ok[order][first]
    rep_doc = d[rep_pos]
    sc = doc_sc[rep_doc]
    top = np.lexsort((rep_pos, -sc))[:k]
    return rep_pos[top].astype(np.int64), sc[top]
