"""RetroLM's page selection: which pages' KV the answer attends to, within the budget."""

from __future__ import annotations

from typing import Any

__all__ = ["fits", "select_pages"]


def fits(lengths: list[int], *, budget_tokens: int, sink_tokens: int) -> bool:
    """True when every page fits the budget (then no scores are needed)."""
    return sum(lengths) <= budget_tokens - sink_tokens


def select_pages(
    lengths: list[int], scores: Any | None, *, budget_tokens: int, sink_tokens: int, recent_pages: int,
    follow_pages: int,
) -> list[int]:
    """Indices (ascending) of the pages to keep, given each page's token count and score.

    All pages when they fit ``budget_tokens - sink_tokens``; else the last ``recent_pages`` (nearest
    the question), then pages by descending score (ties: earlier first), each followed by up to
    ``follow_pages`` next pages, while they fit. Raises ``ValueError`` when scores are needed
    but ``None``.
    """
    left = budget_tokens - sink_tokens
    n = len(lengths)
    if sum(lengths) <= left:
        return list(range(n))
    if scores is None:
        raise ValueError("scores are needed when the pages exceed the budget")
    chosen = set(range(max(0, n - recent_pages), n))
    left -= sum(lengths[i] for i in chosen)
    for i in sorted(range(n), key=lambda j: (-float(scores[j]), j)):
        if i not in chosen:
            if lengths[i] > left:
                continue
            chosen.add(i)
            left -= lengths[i]
        # Then the pages that continue it (even when it was already kept as another page's
        # follower): a fact cut by a page end stays whole.
        for j in range(i + 1, min(n, i + 1 + follow_pages)):
            if j not in chosen and lengths[j] <= left:
                chosen.add(j)
                left -= lengths[j]
    return sorted(chosen)
