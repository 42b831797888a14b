"""Where a character span of a loaded document comes from: its file, pages and section."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Mapping

__all__ = ["provenance"]


def provenance(meta: Mapping[str, Any], start: int, end: int) -> dict[str, Any]:
    """The provenance of ``text[start:end]`` of a document whose ``meta`` a loader wrote.

    Returns ``{"source": str | None, "pages": [int], "heading": str | None}``:

    - ``pages``: the 1-based PDF pages the span touches (``[]`` without ``meta["page_starts"]``);
      an empty span (``start == end``) lies on the page of ``start``.
    - ``heading``: the text of the heading whose section ``start`` lies in (the last heading at
      or before ``start``); when ``start`` precedes every heading, the first heading inside the
      span; else None.

    Pure: reads only ``meta``. Raises ``ValueError`` for a negative or reversed span.
    """
    if not (isinstance(start, int) and isinstance(end, int)) or start < 0 or end < start:
        raise ValueError(f"span must satisfy 0 <= start <= end, got start={start!r}, end={end!r}")
    pages: list[int] = []
    page_starts = meta.get("page_starts") or []
    if page_starts:
        first = max(bisect_right(page_starts, start), 1)
        last = max(bisect_right(page_starts, max(end - 1, start)), 1)
        pages = list(range(first, last + 1))
    heading = None
    headings = meta.get("headings") or []
    offsets = [h[0] for h in headings]
    i = bisect_right(offsets, start) - 1
    if i >= 0:
        heading = headings[i][2]
    elif headings and offsets[0] < end:
        heading = headings[0][2]
    return {"source": meta.get("source"), "pages": pages, "heading": heading}
