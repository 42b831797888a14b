"""``compressor.window``: widen each passage to whole sentences, with neighbours on each side.

A retrieved chunk often starts or ends mid-sentence, and the sentence that answers can sit just
outside it ("sentence-window retrieval"). This stage rewrites ``passage.text`` to the document
text from the start of the sentence holding the chunk's first character to the end of the one
holding its last, plus ``sentences`` more whole sentences before and after, capped at
``max_tokens`` (whitespace tokens; the neighbours nearest the chunk are kept first). The chunk
(id, offsets, provenance, text) stays as indexed, so citations still point at what was
retrieved. It shares the compress slot of the stage order because it is a passage-text rewrite
(retrieve → rerank → compress → reorder → read); it needs no model.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from ..registry import register
from ..stage import Params, RunContext, Stage, timed
from ..types import QAState
from .extractive import split_sentences

__all__ = ["SentenceWindow", "sentence_window"]

# Characters of document looked at on each side per neighbour sentence asked for: sentences
# longer than this are cut at the region's edge (and that partial sentence is left out).
_REACH_CHARS = 600


def sentence_window(text: str, start: int, end: int, sentences: int, max_tokens: int | None = None) -> tuple[int, int]:
    """The span ``(start, end)`` of ``text`` that covers ``text[start:end]`` widened to whole
    sentences, plus up to ``sentences`` whole sentences on each side, within ``max_tokens``
    whitespace tokens (the chunk's own sentences always stay)."""
    reach = _REACH_CHARS * (sentences + 1)
    lo, hi = max(0, start - reach), min(len(text), end + reach)
    spans = [(a + lo, b + lo) for a, b in split_sentences(text[lo:hi])]
    # A sentence cut by the region's edge is not whole: it may not be added as a neighbour.
    first_ok = 1 if lo > 0 and spans else 0
    last_ok = len(spans) - (2 if hi < len(text) and spans else 1)
    inside = [i for i, (a, b) in enumerate(spans) if b > start and a < end]
    if not inside:
        return start, end
    i0, i1 = inside[0], inside[-1]
    s, e = min(spans[i0][0], start), max(spans[i1][1], end)
    budget = None if max_tokens is None else max_tokens - len(text[s:e].split())
    for k in range(1, sentences + 1):
        for j in (i0 - k, i1 + k):  # before, then after: the nearer text first
            if not (first_ok <= j <= last_ok):
                continue
            a, b = spans[j]
            cost = len(text[a:b].split())
            if budget is not None:
                if cost > budget:
                    continue
                budget -= cost
            s, e = min(s, a), max(e, b)
    return s, e


class WindowParams(Params):
    """Params of ``compressor.window``."""

    sentences: int = Field(default=1, ge=0, le=20, description="whole sentences added before and after each passage")
    max_tokens: int | None = Field(default=None, gt=0, description="cap per passage in whitespace tokens (None: no cap)")


@register
class SentenceWindow(Stage):
    """Widen each passage to whole sentences plus ``sentences`` neighbours on each side."""

    key: ClassVar[str] = "compressor.window"
    Params: ClassVar[type[Params]] = WindowParams

    def setup(self, ctx: RunContext) -> None:
        """Open the corpus store: the documents' texts are read from it."""
        self.store = ctx.require_store()

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Rewrite ``passage.text`` of every passage (copies of the states; chunks untouched)."""
        if not hasattr(self, "store"):
            raise RuntimeError("compressor.window: call setup(ctx) before using the stage")
        p: Any = self.params
        batch = [st.model_copy(deep=True) for st in batch]
        with timed(batch, self.key):
            texts: dict[str, str] = {}  # a batch's passages often share documents
            for st in batch:
                for ps in st.passages:
                    c = ps.chunk
                    if c.doc_id not in texts:
                        texts[c.doc_id] = self.store.documents[c.doc_id].text
                    s, e = sentence_window(texts[c.doc_id], c.start, c.end, p.sentences, p.max_tokens)
                    ps.text = texts[c.doc_id][s:e]
        return batch
