"""Helpers shared by the retrievers: index part names, deterministic top-k, passages."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Sequence

import numpy as np

from ..types import Chunk, Passage

__all__ = ["slug", "part_name", "top_k", "select_top_k", "make_passages", "Hits"]

Hits = tuple[np.ndarray, np.ndarray]
"""``(positions, scores)`` of one query, best first: chunk positions (int64) and scores (float64)."""


def slug(text: str, max_len: int = 40) -> str:
    """A file-name-safe short form of ``text`` (e.g. a model name or path)."""
    tail = text.rstrip("/").rsplit("/", 1)[-1] or text
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-.").lower()
    return (s or "x")[:max_len]


def part_name(prefix: str, fields: dict[str, Any]) -> str:
    """Index part name ``f"{prefix}-{hash}"``; the hash covers every field that changes the artifact."""
    blob = json.dumps(fields, sort_keys=True, default=str).encode("utf-8")
    return f"{prefix}-{hashlib.sha256(blob).hexdigest()[:10]}"


def top_k(scores: np.ndarray, k: int, candidates: np.ndarray | None = None) -> Hits:
    """The ``k`` best entries of ``scores`` (optionally only among ``candidates`` positions).

    Ties break by position (lower first), so results never depend on sort stability.
    Returns ``(positions, scores)`` best first; fewer than ``k`` when there are fewer entries.
    """
    if candidates is None:
        return select_top_k(np.arange(len(scores), dtype=np.int64), np.asarray(scores, dtype=np.float64), k)
    pos = np.asarray(candidates, dtype=np.int64)
    return select_top_k(pos, np.asarray(scores, dtype=np.float64)[pos], k)


def select_top_k(positions: np.ndarray, values: np.ndarray, k: int) -> Hits:
    """The ``k`` best of ``values`` (one per entry of ``positions``, any order), ties by position.

    Returns ``(positions, scores)`` best first as int64/float64; fewer than ``k`` when there are fewer.
    """
    if k <= 0 or len(positions) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.int64)
    vals = np.asarray(values, dtype=np.float64)
    if k < len(pos):
        # Keep everything tied with the k-th best so the position tie-break sees all of them.
        kth = np.partition(vals, len(vals) - k)[len(vals) - k]
        keep = vals >= kth
        pos, vals = pos[keep], vals[keep]
    order = np.lexsort((pos, -vals))[:k]
    return pos[order], vals[order]


def make_passages(chunks: Sequence[Chunk], hits: Hits, key: str) -> list[Passage]:
    """Passages for ``hits``, with ``score`` and ``scores[key]`` set to the retriever's score."""
    positions, scores = hits
    return [
        Passage(chunk=chunks[int(p)], score=float(s), scores={key: float(s)})
        for p, s in zip(positions.tolist(), scores.tolist())
    ]
