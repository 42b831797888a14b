"""``compressor.extractive``: query-aware sentence selection to a token budget (the cheap baseline).

Each passage is split into sentences; every sentence is scored by the cosine similarity of its
encoder embedding to the query's; the best sentences are taken greedily while they fit the token
budget — per passage (``scope: passage``) or shared by all passages of a question
(``scope: all``) — and written back in their original order into ``passage.text``, which is
therefore a subsequence of the passage's own sentences; the chunk (id, offsets, provenance,
text) is left as indexed.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import field_validator

from ..registry import register
from ..stage import Params, RunContext, Stage, timed
from ..types import QAState

__all__ = ["ExtractiveCompressor", "split_sentences", "count_tokens", "select_sentences"]

# Words that end with a period without ending a sentence.
_ABBREV = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf", "fig", "no",
    "vol", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "u.s", "u.k", "a.m", "p.m", "approx", "ca", "gen", "col", "lt", "gov", "sen", "rep",
}
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+)|\n\s*\n")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Tokens as the budget counts them: runs of word characters and single punctuation marks."""
    return len(_TOKEN.findall(text))


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the sentences of ``text``, in order, whitespace trimmed.

    Splits after ``.``/``!``/``?`` (and closing quotes or brackets) followed by whitespace and an
    upper-case letter, digit or opening quote, and at blank lines; not after common abbreviations
    or single initials ("J. Smith"). Concatenating the spans' texts in order loses only whitespace.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end = m.end()
        if not m.group().startswith("\n"):
            nxt = text[end:].lstrip()
            if nxt and not (nxt[0].isupper() or nxt[0].isdigit() or nxt[0] in "\"'“‘([" ):
                continue
            word = re.search(r"(\S+)$", text[start : m.start() + 1])
            w = word.group(1).lower().rstrip(".").lstrip("\"'(“‘[") if word else ""
            if m.group().startswith(".") and (w in _ABBREV or (len(w) == 1 and w.isalpha())):
                continue
        _add_span(text, start, end, spans)
        start = end
    _add_span(text, start, len(text), spans)
    return spans


def _add_span(text: str, a: int, b: int, spans: list[tuple[int, int]]) -> None:
    seg = text[a:b]
    lead = len(seg) - len(seg.lstrip())
    trail = len(seg) - len(seg.rstrip())
    if b - trail > a + lead:
        spans.append((a + lead, b - trail))


def select_sentences(scores: list[float], lengths: list[int], budget: int) -> list[int]:
    """Indices of sentences chosen greedily by score while their lengths fit ``budget``, sorted.

    A sentence longer than what is left is skipped and shorter, lower-scored ones still get a
    chance. Ties keep the earlier sentence first. Raises ``ValueError`` on mismatched inputs or a
    negative budget.
    """
    if len(scores) != len(lengths):
        raise ValueError(f"got {len(scores)} scores for {len(lengths)} sentences")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    left = budget
    chosen = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if lengths[i] <= left:
            chosen.append(i)
            left -= lengths[i]
    return sorted(chosen)


class ExtractiveParams(Params):
    """Params of ``compressor.extractive``.

    ``encoder``: hub name of the sentence encoder. ``budget_tokens``: tokens kept (words and
    punctuation marks, see ``count_tokens``) per passage or per question. ``scope``: ``passage``
    (each passage gets the budget) or ``all`` (all passages share it). ``drop_empty``: remove
    passages left with no sentence (else they stay with empty text). ``batch_size``: encoder batch.
    """

    encoder: str = "all-minilm-l6-v2"
    budget_tokens: int = 128
    scope: Literal["passage", "all"] = "passage"
    drop_empty: bool = True
    batch_size: int = 64

    @field_validator("budget_tokens", "batch_size")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v <= 0:
            raise ValueError(f"{info.field_name} must be > 0, got {v}")
        return v

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("encoder must be a non-empty model name or path")
        return v


@register
class ExtractiveCompressor(Stage):
    """Keep the query's most similar sentences of each passage within a token budget."""

    key: ClassVar[str] = "compressor.extractive"
    Params: ClassVar[type[Params]] = ExtractiveParams

    def setup(self, ctx: RunContext) -> None:
        """Load the sentence encoder from the model hub."""
        self.encoder = ctx.models.encoder(self.params.encoder)

    def __call__(self, batch: list[QAState]) -> list[QAState]:
        """Select sentences for every passage of every state; encodes the batch's texts in two calls."""
        if not hasattr(self, "encoder"):
            raise RuntimeError("compressor.extractive: call setup(ctx) before using the stage")
        p = self.params
        # Work on copies: callers may keep the input states.
        batch = [st.model_copy(deep=True) for st in batch]
        with timed(batch, self.key):
            # Split everything first so the encoder sees all sentences of the batch at once.
            plans = []
            sentences: list[str] = []
            for st in batch:
                per_passage = []
                for ps in st.passages:
                    text = ps.text
                    spans = split_sentences(text)
                    lens = [count_tokens(text[a:b]) for a, b in spans]
                    first = len(sentences)
                    sentences.extend(text[a:b] for a, b in spans)
                    per_passage.append((spans, lens, first))
                plans.append(per_passage)
            queries = [st.question.question for st in batch]
            if sentences:
                q = self.encoder.encode(queries, kind="query", batch_size=p.batch_size)
                s = self.encoder.encode(sentences, kind="document", batch_size=p.batch_size)
            out = []
            for qi, (st, per_passage) in enumerate(zip(batch, plans)):
                sims = [
                    [float(s[first + k] @ q[qi]) for k in range(len(spans))] for spans, _, first in per_passage
                ]
                if p.scope == "passage":
                    keep = [select_sentences(sc, lens, p.budget_tokens) for sc, (_, lens, _) in zip(sims, per_passage)]
                else:
                    flat_sc = [x for sc in sims for x in sc]
                    flat_len = [x for _, lens, _ in per_passage for x in lens]
                    owner = [(pi, k) for pi, (spans, _, _) in enumerate(per_passage) for k in range(len(spans))]
                    keep = [[] for _ in per_passage]
                    for j in select_sentences(flat_sc, flat_len, p.budget_tokens):
                        keep[owner[j][0]].append(owner[j][1])
                rec = {"tokens_in": 0, "tokens_out": 0, "sentences_in": 0, "sentences_out": 0,
                       "passages": len(st.passages), "dropped": 0, "original_chars": {}}
                kept = []
                for ps, (spans, lens, _), ks in zip(st.passages, per_passage, keep):
                    rec["tokens_in"] += sum(lens)
                    rec["sentences_in"] += len(spans)
                    rec["original_chars"][ps.chunk.id] = len(ps.text)
                    ps.text = " ".join(ps.text[spans[k][0] : spans[k][1]] for k in ks)
                    rec["tokens_out"] += sum(lens[k] for k in ks)
                    rec["sentences_out"] += len(ks)
                    if not ks and p.drop_empty:
                        rec["dropped"] += 1
                        continue
                    kept.append(ps)
                st.passages = kept
                rec["ratio"] = rec["tokens_out"] / rec["tokens_in"] if rec["tokens_in"] else 1.0
                st.trace.setdefault("compression", {})[self.key] = rec
                out.append(st)
        return out
