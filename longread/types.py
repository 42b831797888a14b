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
    "Chunk",
    "Question",
    "Passage",
    "QAState",
    "Prediction",
    "check_id",
]

# Ids become file names (page KV caches, run dirs) and JSON keys; keep them printable and
# free of path syntax so an id can never escape a directory.
_BAD_ID = re.compile(r"[\x00-\x1f/\\]")


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a usable record id; raise ``ValueError`` naming it otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if _BAD_ID.search(value) or value in {".", ".."}:
        raise ValueError(f"{what} must not contain '/', '\\\\' or control characters, got {value!r}")
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


class Chunk(Record):
    """A span of a document; ``text == document.text[start:end]``."""

    id: str
    doc_id: str
    text: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)

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
    """A retrieved chunk with its current score and the score each stage gave it."""

    chunk: Chunk
    score: float
    scores: dict[str, float] = Field(default_factory=dict)


class QAState(Record):
    """The only thing that flows between query stages: one question and what stages added."""

    question: Question
    passages: list[Passage] = Field(default_factory=list)
    context: str | None = None
    answer: str | None = None
    trace: dict[str, Any] = Field(default_factory=dict)


class Prediction(Record):
    """One line of ``predictions.jsonl``. ``error`` is set when the question failed."""

    id: str
    answer: str | None
    passage_ids: list[str] = Field(default_factory=list)
    trace: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None

    @classmethod
    def from_state(cls, state: QAState) -> "Prediction":
        """Build the prediction line for a finished state."""
        return cls(
            id=state.question.id,
            answer=state.answer,
            passage_ids=[p.chunk.id for p in state.passages],
            trace=state.trace,
        )
