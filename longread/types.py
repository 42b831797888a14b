"""Typed records that flow through longread.

Every record is a pydantic v2 model with ``extra="forbid"`` so a misspelt field is an
error, not a silently ignored attribute.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Record",
    "Document",
    "Provenance",
    "Chunk",
    "Question",
    "Passage",
    "Usage",
    "Citation",
    "QAState",
    "Prediction",
    "check_id",
]

# Ids become JSON keys and, hashed or as paths under a directory, file names. A loaded file's id
# is its relative path, so "/" is allowed as a separator; everything that could make a joined
# path escape its directory (absolute paths, "." or ".." segments, empty segments, "\\") or
# break a line-based file (control characters) is not.
_BAD_ID = re.compile(r"[\x00-\x1f\x7f\\]")


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a usable record id; raise ``ValueError`` naming it otherwise.

    An id is 1-512 printable characters without ``\\``; ``/`` may separate the parts of a
    relative path (``reports/2024/q1.pdf``) but the id may not start or end with ``/``, contain
    ``//``, or have a ``.`` or ``..`` part, so ``Path(dir) / id`` always stays inside ``dir``.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if _BAD_ID.search(value):
        raise ValueError(f"{what} must not contain '\\\\' or control characters, got {value!r}")
    if any(part in {"", ".", ".."} for part in value.split("/")):
        raise ValueError(
            f"{what} may use '/' only between the parts of a relative path (no leading, trailing or double '/', "
            f"no '.' or '..' part), got {value!r}"
        )
    if len(value) > 512:
        raise ValueError(f"{what} must be at most 512 characters, got {len(value)}")
    return value


class Record(BaseModel):
    """Base of all records: unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")


class Document(Record):
    """One corpus document. ``text`` must be non-empty."""

    id: str
    text: str
    title: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id(v, "document id")

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("document text must not be empty")
        return v


class Provenance(Record):
    """Where a chunk comes from, beyond its document id and span: what a citation names.

    ``source`` is the document's file or URL (``meta["source"]``), ``pages`` the 1-based PDF
    pages the span touches (``[]`` when the document records no pages), ``heading`` the section
    heading the span lies under (None when unknown). Derived from the document's loader metadata
    by :func:`longread.loaders.provenance` when the chunk is cut.
    """

    source: str | None = None
    pages: list[int] = Field(default_factory=list)
    heading: str | None = None

    @property
    def page(self) -> int | None:
        """The first page of the span, or None."""
        return self.pages[0] if self.pages else None


class Chunk(Record):
    """A span of a document; ``text == document.text[start:end]``.

    ``provenance`` (source, pages, heading) is set at chunking time for documents whose ``meta``
    records any of them (files read by :mod:`longread.loaders`); None otherwise, and for chunks
    of stores that do not keep it (:func:`longread.citations.chunk_provenance` then derives it
    from the document).
    """

    id: str
    doc_id: str
    text: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    provenance: Provenance | None = None

    @model_validator(mode="after")
    def _span(self) -> "Chunk":
        if self.end < self.start:
            raise ValueError(f"chunk {self.id!r}: end ({self.end}) < start ({self.start})")
        return self


class Question(Record):
    """A question; ``doc_ids`` scopes retrieval, ``gold_ids`` are relevant chunk or doc ids."""

    id: str
    question: str
    answers: list[str] = Field(default_factory=list)
    doc_ids: list[str] | None = None
    gold_ids: list[str] | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_id(v, "question id")

    @field_validator("question")
    @classmethod
    def _question(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("question text must not be empty")
        return v


class Passage(Record):
    """A retrieved chunk with what the reader will see of it, its score and each stage's score.

    ``text`` is the passage as stages after retrieval read it: the chunk's text unless a
    compressor rewrote it (given as None or left out, it is the chunk's text). ``chunk`` is never
    changed, so its id, span and provenance stay those of the indexed chunk.
    """

    chunk: Chunk
    text: str = ""
    score: float
    scores: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _default_text(cls, data: Any) -> Any:
        # No text given (records written before passages had one, retrievers): the chunk's.
        if isinstance(data, dict) and data.get("text") is None and "chunk" in data:
            c = data["chunk"]
            text = c.get("text") if isinstance(c, dict) else getattr(c, "text", None)
            if isinstance(text, str):
                data = {**data, "text": text}
        return data


class Usage(Record):
    """What one stage spent on one question: time, and its model calls and tokens.

    One record per ``(stage, part)``: ``stage`` is the registry key, ``part`` names a sub-step
    (``reader.route``'s ``rag`` and ``fallback``). ``prompt_tokens`` are tokens the model read to
    answer (for a reader: what it saw); ``prefill_tokens`` are further tokens it computed but did
    not read at answer time (RetroLM's page prefill). ``ttft_s`` is the first call's time to
    first token. A batch's seconds are shared evenly by its questions.
    """

    stage: str
    part: str | None = None
    backend: str | None = None
    model: str | None = None
    calls: int = Field(default=0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0)
    new_tokens: int = Field(default=0, ge=0)
    prefill_tokens: int = Field(default=0, ge=0)
    seconds: float = Field(default=0.0, ge=0)
    ttft_s: float | None = None

    @property
    def kind(self) -> str:
        """The stage kind from its key: ``reader``, ``reranker``, ``retriever``, ``compressor``, ..."""
        return self.stage.split(".", 1)[0]

    @property
    def total_tokens(self) -> int:
        """Every token this stage's model processed or produced."""
        return self.prompt_tokens + self.new_tokens + self.prefill_tokens


class Citation(Record):
    """A passage an answer rests on, located in its document.

    ``cited`` tells the two kinds apart: True for a passage the answer marks with ``[n]`` (the
    ``cite`` answer style), False for a passage the reader read without the answer pointing at
    it (every other style lists the passages it read). ``n`` is the passage's 1-based position
    in the reader's prompt (its marker number). ``doc_id``/``chunk_id``/``start``/``end`` locate
    the passage in its document, ``text`` is the passage text the reader saw (compressed, if a
    compressor ran). ``source`` (file or URL), ``pages`` (1-based PDF pages the span touches;
    ``page`` is the first) and ``heading`` come from the chunk's provenance; None/``[]`` when the
    document does not record them.

    Records written before ``cited``/``pages``/``heading`` existed read as cited (they came from
    ``[n]`` markers) with ``pages == [page]``.
    """

    n: int = Field(ge=1)
    doc_id: str
    chunk_id: str
    source: str | None = None
    page: int | None = Field(default=None, ge=1)
    pages: list[int] = Field(default_factory=list)
    heading: str | None = None
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    text: str
    cited: bool = True

    @model_validator(mode="after")
    def _pages(self) -> "Citation":
        if not self.pages and self.page is not None:
            self.pages = [self.page]
        elif self.pages and self.page is None:
            self.page = self.pages[0]
        elif self.pages and self.page != self.pages[0]:
            raise ValueError(f"citation page ({self.page}) must be the first of pages ({self.pages})")
        return self

    def location(self) -> str:
        """``source p. N`` (or ``pp. N-M``), the document id when there is no source, plus the heading."""
        where = self.source or self.doc_id
        if self.pages:
            first, last = self.pages[0], self.pages[-1]
            where += f" p. {first}" if first == last else f" pp. {first}-{last}"
        if self.heading:
            where += f" ({self.heading})"
        return where


class QAState(Record):
    """The only thing that flows between query stages: one question and what stages added.

    ``usage`` holds typed cost records per stage; ``citations`` the passages the answer rests on
    (see :class:`Citation`: marked ``[n]`` by a ``cite``-style answer, or read by the reader);
    ``trace`` only method-specific debug data.
    """

    question: Question
    passages: list[Passage] = Field(default_factory=list)
    context: str | None = None
    answer: str | None = None
    citations: list[Citation] = Field(default_factory=list)
    usage: list[Usage] = Field(default_factory=list)
    trace: dict[str, Any] = Field(default_factory=dict)

    def usage_for(self, stage: str, part: str | None = None) -> Usage:
        """The usage record of ``(stage, part)``, created empty on first use."""
        for u in self.usage:
            if u.stage == stage and u.part == part:
                return u
        u = Usage(stage=stage, part=part)
        self.usage.append(u)
        return u


class Prediction(Record):
    """One line of ``predictions.jsonl``. ``error`` is set when the question failed."""

    id: str
    answer: str | None
    passage_ids: list[str] = Field(default_factory=list)
    citations: list[Citation] = Field(default_factory=list)
    usage: list[Usage] = Field(default_factory=list)
    trace: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None

    @classmethod
    def from_state(cls, state: QAState) -> "Prediction":
        """Build the prediction line for a finished state."""
        return cls(
            id=state.question.id,
            answer=state.answer,
            passage_ids=[p.chunk.id for p in state.passages],
            citations=state.citations,
            usage=state.usage,
            trace=state.trace,
        )
